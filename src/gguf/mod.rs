//! GGUF format I/O: typed metadata values, the key names, a checking reader and a streaming,
//! atomic writer. Pure bytes: no candle, no model knowledge.

pub mod keys;
pub mod limits;
pub mod reader;
pub mod value;
pub mod writer;

pub use limits::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_NAME_BYTES};
pub use reader::{GgufFile, TensorInfo};
pub use value::{Value, ValueType};
pub use writer::{GgufWriter, TensorPlan};
