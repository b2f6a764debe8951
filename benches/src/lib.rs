//! Benchmarks of cpengine against real CRIU and the peers (criterion benches in `benches/`,
//! the comparison runner in `src/bin/`).
