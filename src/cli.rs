//! Command line: what was typed (clap) and the dispatch to each job. `--help` is where every
//! flag is explained.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::export::model::OutType;

const ABOUT: &str = "ApiQ 2-bit quantization for GGUF / llama.cpp.

Without a subcommand, converts MODEL (a Hugging Face directory with config.json, safetensors
and tokenizer.json, or a .gguf file) to OUT.gguf. The output appears only when complete.";

#[derive(Parser, Debug)]
#[command(name = "apiq2gguf", version, about = ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub convert: ConvertArgs,
    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Show llama.cpp's own log on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Hugging Face model directory or .gguf file.
    pub model: Option<PathBuf>,
    /// Output GGUF path.
    pub out: Option<PathBuf>,
    /// Tensor type of the 2-D weights (norms and other vectors stay F32; rows that Q8_0
    /// blocks do not divide fall back to F16).
    #[arg(long = "type", value_enum, default_value_t = OutType::F16)]
    pub out_type: OutType,
    /// llama.cpp pre-tokenizer name for byte-level BPE vocabularies, when it is not
    /// recognised from tokenizer.json (e.g. llama-bpe, qwen2, smollm, gpt-2).
    #[arg(long)]
    pub tokenizer_pre: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Perplexity of a GGUF model on a text file, scored exactly as llama-perplexity does
    /// (second half of each chunk; BOS first if the vocabulary adds it).
    Perplexity(PerplexityCli),
    /// Greedy text generation from a prompt.
    Generate(GenerateCli),
    /// Metadata and tensor table (types, shapes, bits per weight) of a GGUF file.
    Inspect(InspectCli),
    /// llama.cpp's token ids for a text, one line, space-separated.
    Tokenize(TokenizeCli),
}

#[derive(Args, Debug)]
pub struct PerplexityCli {
    /// GGUF model.
    pub model: PathBuf,
    /// Text file to score (one trailing newline is dropped, as llama-perplexity does).
    #[arg(short = 'f', long = "file")]
    pub text: PathBuf,
    /// Context length of each chunk.
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub ctx: usize,
    /// Score only the first N chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Tokens per decode; n_batch / ctx chunks are decoded side by side.
    #[arg(short = 'b', long = "batch", default_value_t = 2048)]
    pub batch: usize,
    /// LoRA adapter GGUF to apply.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Scale of the LoRA adapter.
    #[arg(long, default_value_t = 1.0)]
    pub lora_scale: f32,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
}

#[derive(Args, Debug)]
pub struct GenerateCli {
    /// GGUF model.
    pub model: PathBuf,
    /// Prompt text (special-token text such as <|im_start|> is parsed).
    #[arg(short = 'p', long)]
    pub prompt: String,
    /// Number of tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
    pub n_predict: usize,
    /// LoRA adapter GGUF to apply.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Scale of the LoRA adapter.
    #[arg(long, default_value_t = 1.0)]
    pub lora_scale: f32,
    /// Also print the prompt's and the generated token ids.
    #[arg(long)]
    pub ids: bool,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
}

#[derive(Args, Debug)]
pub struct InspectCli {
    /// GGUF file.
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct TokenizeCli {
    /// GGUF model whose vocabulary to use.
    pub model: PathBuf,
    /// Text to tokenize.
    #[arg(short = 'p', long, conflicts_with = "file")]
    pub prompt: Option<String>,
    /// File to tokenize, read as bytes.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// Do not add BOS/EOS even where the vocabulary asks for them.
    #[arg(long)]
    pub no_special: bool,
    /// Parse special-token text (e.g. <|im_end|>) into its token.
    #[arg(long)]
    pub parse_special: bool,
}

impl TokenizeCli {
    pub fn text(&self) -> Result<Vec<u8>> {
        match (&self.prompt, &self.file) {
            (Some(p), _) => Ok(p.as_bytes().to_vec()),
            (None, Some(f)) => {
                std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", f.display()))
            }
            (None, None) => bail!("give --prompt or --file"),
        }
    }
}
