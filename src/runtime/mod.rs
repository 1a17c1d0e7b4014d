//! Running GGUF files with llama.cpp (the pinned llama-cpp-2 / llama-cpp-sys-2): on the CPU, and
//! with `--features cuda` layers offloaded to the GPU (`--gpu-layers`).

pub mod bench;
pub mod compare;
pub mod generate;
pub mod perplexity;

use std::ffi::CStr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};

/// The llama.cpp backend; `LlamaBackend::init` works once per process.
pub struct Runtime {
    pub backend: LlamaBackend,
    /// Layers every model loads onto the GPU (llama.cpp's `-ngl`); 0 runs on the CPU.
    gpu_layers: u32,
}

impl Runtime {
    pub fn init(verbose: bool) -> Result<Runtime> {
        let backend = LlamaBackend::init().context("cannot start llama.cpp")?;
        if !verbose {
            llama_cpp_2::send_logs_to_tracing(
                llama_cpp_2::LogOptions::default().with_logs_enabled(false),
            );
        }
        Ok(Runtime {
            backend,
            gpu_layers: 0,
        })
    }

    /// Offloads the first `layers` layers of every model it loads (all of them for a number at
    /// least the model's layer count), if this build has a GPU backend and finds a device.
    pub fn with_gpu_layers(mut self, layers: u32) -> Result<Runtime> {
        #[allow(unsafe_code)]
        // SAFETY: a plain query of the linked llama.cpp, no arguments.
        let gpu = unsafe { llama_cpp_sys_2::llama_supports_gpu_offload() };
        if layers > 0 && !gpu {
            bail!(
                "--gpu-layers {layers}: this build runs on the CPU only (build with `--features \
                 cuda` for the CUDA backend) or it finds no GPU"
            );
        }
        self.gpu_layers = layers;
        Ok(self)
    }

    /// Layers every model loads onto the GPU (`with_gpu_layers`).
    pub fn gpu_layers(&self) -> u32 {
        self.gpu_layers
    }

    /// ggml's CPU feature line (`llama_print_system_info`), to check what the build uses.
    pub fn system_info() -> String {
        #[allow(unsafe_code)]
        // SAFETY: llama_print_system_info returns a pointer to a static NUL-terminated buffer.
        let s = unsafe { CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
        s.to_string_lossy().trim().to_string()
    }

    /// The APIQ2 kernels this build runs: the plain buffer's dot product and the repack
    /// buffer's matrix kernels (llama.cpp's default placement of weights).
    pub fn apiq2_kernels() -> String {
        // Defined by vendor/ggml-apiq2, which build.rs links in place of the unpatched ggml.
        extern "C" {
            fn apiq2_vec_dot_kernel() -> *const std::ffi::c_char;
            fn apiq2_repack_kernel() -> *const std::ffi::c_char;
        }
        #[allow(unsafe_code)]
        // SAFETY: both return pointers to static NUL-terminated string literals.
        let (dot, repack) = unsafe {
            (
                CStr::from_ptr(apiq2_vec_dot_kernel()),
                CStr::from_ptr(apiq2_repack_kernel()),
            )
        };
        format!(
            "vec_dot {} | repack {}",
            dot.to_string_lossy(),
            repack.to_string_lossy()
        )
    }

    pub fn load(&self, path: &Path) -> Result<LlamaModel> {
        if !path.is_file() {
            bail!("{}: no such file", path.display());
        }
        // Our own reader gives precise reasons where llama.cpp only says "null result".
        crate::gguf::GgufFile::open(path)?;
        let params = LlamaModelParams::default().with_n_gpu_layers(self.gpu_layers);
        LlamaModel::load_from_file(&self.backend, path, &params).map_err(|e| {
            anyhow::anyhow!("{}: llama.cpp cannot load this model ({e})", path.display())
        })
    }

    /// The model and, if given, its LoRA adapter.
    pub fn load_with_lora(
        &self,
        path: &Path,
        lora: Option<&Path>,
    ) -> Result<(LlamaModel, Option<LlamaLoraAdapter>)> {
        let mut model = self.load(path)?;
        let adapter = match lora {
            Some(p) => Some(Self::load_lora(&mut model, p)?),
            None => None,
        };
        Ok((model, adapter))
    }

    /// A context on `model` with `adapter` (if any) applied at `scale`.
    pub fn context<'m>(
        &self,
        model: &'m LlamaModel,
        params: LlamaContextParams,
        adapter: Option<&mut LlamaLoraAdapter>,
        scale: f32,
    ) -> Result<LlamaContext<'m>> {
        let mut ctx = model
            .new_context(&self.backend, params)
            .context("cannot create a llama.cpp context")?;
        if let Some(ad) = adapter {
            ctx.lora_adapter_set(ad, scale)
                .context("cannot apply the LoRA adapter")?;
        }
        Ok(ctx)
    }

    pub fn load_lora(model: &mut LlamaModel, path: &Path) -> Result<LlamaLoraAdapter> {
        if !path.is_file() {
            bail!("{}: no such file", path.display());
        }
        crate::gguf::GgufFile::open(path)?;
        model.lora_adapter_init(path).map_err(|e| {
            anyhow::anyhow!(
                "{}: llama.cpp cannot load this adapter ({e})",
                path.display()
            )
        })
    }
}

/// The thread count: all cores unless told otherwise (llama.cpp's default of 4 oversubscribes
/// small machines).
pub fn threads(requested: Option<usize>) -> i32 {
    requested.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())) as i32
}
