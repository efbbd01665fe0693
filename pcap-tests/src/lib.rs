//! Golden replay cases: see `cases/` and `README.md`.
