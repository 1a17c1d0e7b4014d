//! One integration binary: the CLI run as a user runs it, checked against independent
//! references (golden numbers from ../shared/models/README.md, llama.cpp's own tokenization).

mod calib_edges;
mod calibrate;
mod common;
mod convert_golden;
mod cpu_paths;
mod crash;
mod demo;
mod errors;
mod eval;
mod pack;
mod smollm2;
