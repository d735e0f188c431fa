//! `tether bench`: the load generator and the echo backend the benchmarks run against.

pub mod echo;
