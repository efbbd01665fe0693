//! Bad input gets an error, never a panic: mutated copies of the example (bytes flipped,
//! dropped, duplicated; lines swapped) either load into a valid state that round-trips, or
//! are rejected with an error that says something.

use nodeplane_state::*;

/// xorshift64*: deterministic, so a failing case can be reproduced from its number.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING: &[&str] = &[
    "0",
    "65536",
    "-1",
    "4294967296",
    "::",
    "0.0.0.0",
    "255.255.255.255",
    "ff:ff:ff:ff:ff:ff",
    "[",
    "{",
    ": ",
    "- ",
    "\t",
    "~",
    "null",
    "''",
    "&a",
    "*a",
    "---\n",
    "0x10",
    "1e9",
    "10.0.0.1/8",
    "fd00::1/200",
    "\u{feff}",
    "\u{0}",
];

fn mutate(base: &str, rng: &mut Rng) -> String {
    let mut s = base.to_string();
    for _ in 0..1 + rng.below(3) {
        let mut at = rng.below(s.len() + 1);
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        match rng.below(4) {
            0 => s.insert_str(at, INTERESTING[rng.below(INTERESTING.len())]),
            1 => {
                let mut end = (at + 1 + rng.below(8)).min(s.len());
                while !s.is_char_boundary(end) {
                    end += 1;
                }
                s.replace_range(at..end, "");
            }
            2 => {
                // Replace a token (up to the next space/newline) with an interesting value.
                let end = s[at..].find([' ', '\n', ',']).map_or(s.len(), |i| at + i);
                s.replace_range(at..end, INTERESTING[rng.below(INTERESTING.len())]);
            }
            _ => {
                // Swap two lines (breaks indentation and ordering).
                let mut lines: Vec<&str> = s.lines().collect();
                if lines.len() > 1 {
                    let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                    lines.swap(a, b);
                }
                s = lines.join("\n");
            }
        }
    }
    s
}

#[test]
fn mutated_examples_load_or_fail_cleanly() {
    let base: String = example::FILES.iter().map(|(_, t)| *t).collect();
    let mut rng = Rng(0x5eed_0f5a_7e00);
    let (mut ok, mut rejected) = (0, 0);
    for case in 0..1000 {
        let text = mutate(&base, &mut rng);
        match State::from_yaml_str(&text) {
            Ok(state) => {
                ok += 1;
                validate(&state).unwrap_or_else(|e| panic!("case {case}: loaded but {e}"));
                let again = State::from_yaml_str(&state.to_yaml_string().unwrap())
                    .unwrap_or_else(|e| panic!("case {case}: does not round-trip: {e}"));
                assert_eq!(again, state, "case {case}");
            }
            Err(e) => {
                rejected += 1;
                assert!(!e.to_string().trim().is_empty(), "case {case}: empty error");
                if let LoadError::Invalid(v) = &e {
                    assert!(!v.problems.is_empty(), "case {case}");
                }
            }
        }
    }
    // Both outcomes must occur, or the mutations are not exercising anything.
    assert!(ok > 10 && rejected > 300, "ok {ok}, rejected {rejected}");
}
