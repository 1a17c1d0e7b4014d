//! One function per subcommand: what `main` dispatches to. Each prints its own results
//! (stdout) and progress (stderr).

pub mod dev;
pub mod eval;
pub mod inspect;
pub mod main_job;
pub mod run;
