//! The nodeplane daemon and CLI library: replay of captures through the pipeline.
