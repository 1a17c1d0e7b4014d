//! Command line: what was typed (clap) and the dispatch to each job. `--help` is where every
//! flag is explained.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::apiq::recipe::{Method, Recipe};
use crate::export::calibrated::ExportOptions;
use crate::export::model::OutType;
use crate::nn::compute::{Compute, Precision};
use crate::pack::overrides::TensorType;
use crate::pack::{EmbedType, Format, LoraType};
use crate::quant::lora::LoraSpec;
use crate::quant::{KInit, QuantSpec};

const ABOUT: &str = "ApiQ 2-bit quantization for GGUF / llama.cpp.

Without a subcommand, calibrates MODEL (a Hugging Face directory with config.json, safetensors
and tokenizer.json, or a .gguf file) with ApiQ and writes OUT.gguf (the base model, calibrated
linears packed in --format), OUT.lora.gguf (the LoRA adapter) and OUT.Modelfile (for Ollama).
With --type, converts without quantizing instead. Outputs appear only when complete; an interrupted
calibration resumes at the next block when the same command is run again.";

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
    /// Convert without calibrating, to this type for every 2-D weight (norms and other vectors
    /// stay F32; rows that the type's blocks do not divide fall back to F16). q4_0 / q4_1 are
    /// ggml's own round-to-nearest quantizers, embeddings and output included (llama-quantize's
    /// --pure without an importance matrix).
    #[arg(long = "type", value_enum)]
    pub out_type: Option<OutType>,
    #[command(flatten)]
    pub calib: CalibCli,
    /// llama.cpp pre-tokenizer name for byte-level BPE vocabularies, when it is not
    /// recognised from tokenizer.json (e.g. llama-bpe, qwen2, smollm, gpt-2).
    #[arg(long)]
    pub tokenizer_pre: Option<String>,
}

/// Calibration flags; defaults are the released ApiQ recipe (2-bit, g64, asymmetric, ApiQ-bw,
/// LoRA r64 alpha 16, 20 epochs × 128 windows × 2048 tokens, seed 2).
#[derive(Args, Debug)]
pub struct CalibCli {
    /// Calibration method.
    #[arg(long, value_enum, default_value_t = Method::ApiqBw, help_heading = "Calibration")]
    pub method: Method,
    /// Weight bits (2, 3 or 4; 5 for q5_k, 6 for q6_k).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=6), help_heading = "Calibration")]
    pub bits: u32,
    /// Weights per quantization group along the input dimension (32, 64 or 128).
    #[arg(long, default_value_t = 64, value_parser = parse_group_size, help_heading = "Calibration")]
    pub group_size: usize,
    /// Symmetric grid {−(2^(b−1)−1), …, 2^(b−1)}·s instead of asymmetric.
    #[arg(long, help_heading = "Calibration")]
    pub symmetric: bool,
    /// Train the clipping only (LWC), no LoRA.
    #[arg(long, help_heading = "Calibration")]
    pub no_lora: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 64, help_heading = "Calibration")]
    pub lora_rank: usize,
    /// LoRA alpha (scaling = alpha / rank).
    #[arg(long, default_value_t = 16.0, help_heading = "Calibration")]
    pub lora_alpha: f64,
    /// Calibration text file(s), concatenated in order [default: the C4 and Wikipedia samples
    /// fetched by scripts/fetch-calib.sh into ~/.cache/apiq2gguf/calib].
    #[arg(long, num_args = 1.., help_heading = "Calibration")]
    pub calib: Vec<PathBuf>,
    /// Use only the first N bytes of the calibration text.
    #[arg(long, help_heading = "Calibration")]
    pub calib_max_bytes: Option<usize>,
    /// Number of calibration windows [default: 128; 16 with --quick].
    #[arg(long, help_heading = "Calibration")]
    pub nsamples: Option<usize>,
    /// Tokens per window, clipped to the model's context [default: 2048; 256 with --quick].
    #[arg(long, help_heading = "Calibration")]
    pub seqlen: Option<usize>,
    /// Passes over the windows per block [default: 20; 2 with --quick].
    #[arg(long, help_heading = "Calibration")]
    pub epochs: Option<usize>,
    /// Windows per training step (the released code's --batch_size, 1 there): each step's
    /// loss and gradient are the means over its windows; must divide --nsamples.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Calibration")]
    pub batch_size: u32,
    /// Seed of the window sampling and the LoRA initialisation.
    #[arg(long, default_value_t = 2, help_heading = "Calibration")]
    pub seed: u64,
    /// A small recipe for demos and CI (16 windows × 256 tokens, 2 epochs).
    #[arg(long, help_heading = "Calibration")]
    pub quick: bool,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu", help_heading = "Calibration")]
    pub device: String,
    /// Calibrate data-parallel on several devices, comma-separated: CUDA ordinals (0,1,2,3;
    /// NCCL sums the gradients, in a build with --features nccl) or `cpu,cpu` (ranks as CPU
    /// threads, to test the parallel path). Each rank holds the block and its share of every
    /// step's windows: --batch-size must be a multiple of their number. Replaces --device.
    #[arg(long, value_delimiter = ',', help_heading = "Calibration")]
    pub devices: Vec<String>,
    /// CUDA matrix products: f32, or tf32 (f32 accumulation; the released code uses fp16
    /// autocast). On an H100 tf32 measured slower for these shapes (59 vs 51 ms per step).
    #[arg(long, value_enum, default_value = "f32", help_heading = "Calibration")]
    pub cuda_matmul: crate::device::CudaMatmul,
    /// Operand precision of the trained block's matrix products [default: bf16 on CUDA, f32 on
    /// the CPU]. bf16/f16 run them on tensor cores with f32 accumulation; master weights, LWC
    /// logits, LoRA pairs, optimizer state and the loss stay f32; f16 adds dynamic loss scaling
    /// (as the released code's fp16 autocast).
    #[arg(long, value_enum, help_heading = "Calibration")]
    pub precision: Option<Precision>,
    /// Kernels on CUDA: fused (ours: the block's backward written out; the LWC quantizer,
    /// causal softmax, RMSNorm, RoPE, SwiGLU, loss and AdamW in one pass each) or candle
    /// (candle's ops and autograd, the reference). The CPU always runs candle's.
    #[arg(long, value_enum, default_value_t = Kernels::Fused, help_heading = "Calibration")]
    pub kernels: Kernels,
    /// Where the clipping of a K format (q2_k … q6_k) starts: ggml (the default: the ranges
    /// ggml's own quantizer picks with the importance matrix of the quantized chain, as
    /// llama-quantize with llama-imatrix's) or lwc (σ(4) = 0.982 of each sub-block's range,
    /// ApiQ's start, as the group formats always do).
    #[arg(long, value_enum, help_heading = "Calibration")]
    pub k_init: Option<KInit>,
    /// Also train an LWC-only copy of every block on the same inputs, for the closing table.
    #[arg(long, help_heading = "Calibration")]
    pub baselines: bool,
    /// How the calibrated linears are stored [default: apiq2 for 2-bit groups of 64, else q4_1].
    /// Every format holds the calibration bit for bit: q2_0 restricts the zero points to
    /// {1, 2} during calibration; q2_k, q4_k and q5_k calibrate through the type's own
    /// two-level grid (a clipping pair per sub-block) wherever a row holds whole 256-value
    /// super-blocks, and other rows fall back as llama-quantize does (error reported).
    #[arg(long, value_enum, help_heading = "Output")]
    pub format: Option<Format>,
    /// Type of the token embeddings and output matrix (auto: what llama-quantize picks for the
    /// file type).
    #[arg(long, value_enum, default_value_t = EmbedType::Auto, help_heading = "Output")]
    pub embed_type: EmbedType,
    /// Type of the adapter's tensors (q8_0 halves its size; rows not a multiple of 32 stay F16).
    #[arg(long, value_enum, default_value_t = LoraType::F16, help_heading = "Output")]
    pub lora_type: LoraType,
    /// llama-quantize's --tensor-type: the first PATTERN (a regular expression searched in the
    /// GGUF tensor name) that matches gives TYPE (a ggml type: q4_k, q6_k, iq3_s, q8_0 …),
    /// with llama-quantize's fallback where its blocks do not divide the rows. Repeatable.
    /// Embeddings, output and other plain tensors take any type ggml quantizes without an
    /// importance matrix; calibrated linears a K type in the K formats (trained through its
    /// grid) and any type in the frozen formats (iq2_xxs … iq3_s).
    #[arg(long, value_name = "PATTERN=TYPE", value_parser = TensorType::parse, help_heading = "Output")]
    pub tensor_type: Vec<TensorType>,
    /// llama-quantize's --pure: every calibrated linear in the format's type. Without it the K
    /// and IQ formats follow llama-quantize's mixture for their file type (q2_k: attn_v,
    /// ffn_down and attn_output in Q3_K/Q4_K …), each linear trained through its own type.
    #[arg(long, help_heading = "Output")]
    pub pure: bool,
    /// Also write OUT.f16.gguf: the same calibration as F16 values on the learned grid.
    #[arg(long, help_heading = "Output")]
    pub f16_twin: bool,
    /// Also write a Hugging Face PEFT adapter (f32, HF names) and the fake-quant base
    /// (DIR/base, F16 safetensors + config.json) to continue finetuning in Python.
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    pub peft: Option<PathBuf>,
}

/// Which implementation of the quantizer, softmax and optimizer runs on CUDA.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    Fused,
    Candle,
}

impl Kernels {
    /// What runs on a device of this kind at this precision.
    pub fn compute(self, cuda: bool, precision: Option<Precision>) -> Compute {
        Compute {
            precision: precision.unwrap_or(if cuda {
                Precision::Bf16
            } else {
                Precision::F32
            }),
            fused: cuda && self == Kernels::Fused,
        }
    }
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
    /// Prompt-processing (pp) and generation (tg) speed of a GGUF model on the CPU, measured as
    /// llama-bench does (random tokens from an empty cache, mean ± sd over repetitions).
    Bench(BenchCli),
    /// Quality per byte: calibrate a matrix of rows (RTN, LWC only, ApiQ-bw with LoRA r16/r64
    /// stored F16/Q8_0, at each --bits) from MODEL, score each against MODEL on every --text
    /// (perplexity, KL divergence, top-1 agreement) and write DIR/results.md. Finished rows
    /// are reused.
    Eval(EvalCli),
    /// Time one ApiQ-bw training step on a random block of a named shape (benchmarks).
    #[command(hide = true)]
    BenchStep(BenchStepCli),
    /// Compare the fused CUDA kernels with candle's reference ops on random data.
    #[command(hide = true)]
    CheckKernels(CheckKernelsCli),
    /// Faithfulness A/B: write one block's weights, inputs, targets and initial LoRA to DIR,
    /// then train it with our step and write every step's loss (scripts/ab-gpu.sh).
    #[command(hide = true)]
    TraceBlock(TraceBlockCli),
}

#[derive(Args, Debug)]
pub struct EvalCli {
    /// Source model (.gguf): what every row is made from and compared with.
    pub model: PathBuf,
    /// Output folder: rows/ (models, adapters, per-row results) and results.md.
    pub dir: PathBuf,
    /// Evaluation text(s), each scored for every row.
    #[arg(long = "text", num_args = 1.., required = true)]
    pub texts: Vec<PathBuf>,
    /// Our K and IQ formats to add rows of (ApiQ-bw, Q8_0 LoRA r16 and r32, each at its own
    /// bits; q2_k, q4_k_m, iq2_xs …), beside llama-quantize's rows of the same names.
    #[arg(long, value_enum, num_args = 1..)]
    pub formats: Vec<Format>,
    /// Weight bits of the quantized rows.
    #[arg(long, num_args = 1.., default_values_t = [2u32, 3, 4])]
    pub bits: Vec<u32>,
    /// Calibration text file(s) [default: the calibration's default].
    #[arg(long, num_args = 1..)]
    pub calib: Vec<PathBuf>,
    /// Use only the first N bytes of the calibration text.
    #[arg(long)]
    pub calib_max_bytes: Option<usize>,
    /// The calibration's quick recipe for every row (CI, demos).
    #[arg(long)]
    pub quick: bool,
    /// Calibration windows of every row [default: the calibration's default].
    #[arg(long)]
    pub nsamples: Option<usize>,
    /// Tokens per calibration window [default: the calibration's default].
    #[arg(long)]
    pub seqlen: Option<usize>,
    /// Calibration epochs of every row [default: the calibration's default].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Calibration seed of every row [default: the calibration's default].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Device of the calibrations: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Context of the scoring (as llama-perplexity's -c).
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub ctx: usize,
    /// Chunks scored per text (default: all).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// CPU threads of the scoring (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Offload of every scored model, and of llama-imatrix (its -ngl; tools built with CUDA).
    #[command(flatten)]
    pub offload: Offload,
    /// Folder holding stock llama.cpp's llama-quantize and llama-imatrix (scripts/build-stock-llama.sh
    /// builds them from the PyPI sdist): adds rows of llama.cpp's own types, each without and
    /// with an importance matrix from the same calibration text.
    #[arg(long)]
    pub llama_bin: Option<PathBuf>,
    /// llama.cpp types of those rows.
    #[arg(long, num_args = 1.., default_values = crate::eval::STOCK_TYPES)]
    pub stock_types: Vec<String>,
}

impl EvalCli {
    /// Calibration flags every row shares.
    pub fn recipe(&self) -> Vec<String> {
        let mut r = Vec::new();
        if self.quick {
            r.push("--quick".to_string());
        }
        if !self.calib.is_empty() {
            r.push("--calib".into());
            r.extend(self.calib.iter().map(|p| p.display().to_string()));
        }
        if let Some(n) = self.calib_max_bytes {
            r.extend(["--calib-max-bytes".into(), n.to_string()]);
        }
        for (flag, value) in [
            ("--nsamples", self.nsamples.map(|v| v.to_string())),
            ("--seqlen", self.seqlen.map(|v| v.to_string())),
            ("--epochs", self.epochs.map(|v| v.to_string())),
            ("--seed", self.seed.map(|v| v.to_string())),
        ] {
            if let Some(v) = value {
                r.extend([flag.to_string(), v]);
            }
        }
        r.extend(["--device".into(), self.device.clone()]);
        r
    }
}

#[derive(Args, Debug)]
pub struct TraceBlockCli {
    /// Hugging Face model directory or .gguf file.
    pub model: PathBuf,
    /// Output folder.
    pub dir: PathBuf,
    /// Which block.
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    #[command(flatten)]
    pub calib: CalibCli,
}

#[derive(Args, Debug)]
pub struct CheckKernelsCli {
    /// cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct BenchStepCli {
    /// Block shape: stories260k, smollm2-135m or llama2-7b.
    #[arg(long, default_value = "smollm2-135m")]
    pub shape: String,
    /// Tokens per step.
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The data-parallel step on these devices (as calibration's --devices; one window per
    /// device and step, gradients summed every step), in place of --device. One device times
    /// the step with its all-reduce machinery.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// CUDA matrix products: tf32 or f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub cuda_matmul: crate::device::CudaMatmul,
    /// Operand precision of the products [default: bf16 on CUDA, f32 on the CPU].
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// fused (ours) or candle kernels on CUDA.
    #[arg(long, value_enum, default_value_t = Kernels::Fused)]
    pub kernels: Kernels,
}

/// Where llama.cpp runs the model (perplexity, generate, bench).
#[derive(Args, Debug)]
pub struct Offload {
    /// Layers to offload to the GPU (llama.cpp's -ngl; 99 or more: all). Needs a build with
    /// `--features cuda`; 0 runs on the CPU.
    #[arg(long = "gpu-layers", visible_alias = "ngl", default_value_t = 0)]
    pub gpu_layers: u32,
    /// Keep every weight in the plain CPU buffer (llama.cpp's --no-repack): no AMX tiles and no
    /// repacked SIMD kernels, only the plain dot products; the reference the faster CPU paths
    /// are checked against. `bench` prints which paths held the weights.
    #[arg(
        long = "no-repack",
        visible_alias = "nr",
        conflicts_with = "gpu_layers"
    )]
    pub no_repack: bool,
}

#[derive(Args, Debug)]
pub struct BenchCli {
    /// GGUF model.
    pub model: PathBuf,
    /// LoRA adapter GGUF to apply (its cost is part of the measurement).
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Prompt tokens of the pp test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens of the tg test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "reps", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub reps: u64,
    #[command(flatten)]
    pub offload: Offload,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
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
    #[command(flatten)]
    pub offload: Offload,
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
    #[command(flatten)]
    pub offload: Offload,
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

impl CalibCli {
    pub fn format(&self) -> Format {
        self.format.unwrap_or_else(|| {
            Format::default_for(&QuantSpec {
                bits: self.bits,
                group_size: self.group_size,
                symmetric: self.symmetric,
                zero_range: None,
                kgrid: None,
            })
        })
    }

    pub fn export(&self) -> ExportOptions {
        ExportOptions {
            format: self.format(),
            embed: self.embed_type,
            lora_type: self.lora_type,
            f16_twin: self.f16_twin,
            peft: self.peft.clone(),
            tensor_types: self.tensor_type.clone(),
            pure: self.pure,
        }
    }

    /// How the calibration computes on a CUDA device (`cuda`) or the CPU.
    pub fn compute(&self, cuda: bool) -> Compute {
        self.kernels.compute(cuda, self.precision)
    }

    pub fn recipe(&self, compute: Compute) -> Result<Recipe> {
        let base = if self.quick {
            Recipe::quick()
        } else {
            Recipe::default()
        };
        if self.lora_rank == 0 {
            bail!("--lora-rank must be at least 1 (use --no-lora for none)");
        }
        let lora = (!self.no_lora && self.method != Method::Rtn).then_some(LoraSpec {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
        });
        let quant = QuantSpec {
            bits: self.bits,
            group_size: self.group_size,
            symmetric: self.symmetric,
            zero_range: None,
            kgrid: None,
        };
        if self.format().frozen() {
            let f = self.format().name();
            if self.no_lora && self.method != Method::Rtn {
                bail!("--format {f} trains only the LoRA over ggml's frozen {f}: drop --no-lora (or use --method rtn for the frozen base alone)");
            }
            if self.devices.len() > 1 {
                bail!("--format {f} quantizes each block with the importance matrix of all windows, which one device sees: use --device");
            }
        }
        let nsamples = self.nsamples.unwrap_or(base.nsamples);
        crate::apiq::train::steps_per_epoch(nsamples, self.batch_size as usize)?;
        Ok(Recipe {
            method: self.method,
            quant: self.format().constrain(quant),
            lora,
            nsamples,
            seqlen: self.seqlen.unwrap_or(base.seqlen),
            epochs: self.epochs.unwrap_or(base.epochs),
            batch: self.batch_size as usize,
            seed: self.seed,
            precision: compute.precision,
            k_init: match self.format().kgrid() {
                Some(_) => self.k_init.unwrap_or(KInit::Ggml),
                None => KInit::Lwc,
            },
            frozen_base: self.format().frozen().then(|| self.format().name()),
            ..base
        }
        .with_method_rates())
    }
}

fn parse_group_size(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(g @ (32 | 64 | 128)) => Ok(g),
        _ => Err(format!("`{s}` is not one of 32, 64, 128")),
    }
}
