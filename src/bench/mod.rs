//! Benchmarks: library functions that time parts of the engine on the current adapter and
//! return printable reports (the CLI's `moxe bench` runs them).

pub mod moe;
