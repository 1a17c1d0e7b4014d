//! The loaded llama.cpp backend and model, shared by the runtime's commands.

use std::ffi::CStr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};

use super::log;

/// The llama.cpp backend; `LlamaBackend::init` works once per process.
pub struct Runtime {
    pub backend: LlamaBackend,
    /// Layers every model loads onto the GPU (llama.cpp's `-ngl`); 0 runs on the CPU.
    gpu_layers: u32,
}

impl Runtime {
    pub fn init(verbose: bool) -> Result<Runtime> {
        log::install(verbose);
        let backend = LlamaBackend::init().context("cannot start llama.cpp")?;
        Ok(Runtime {
            backend,
            gpu_layers: 0,
        })
    }

    /// Loads every weight into the plain CPU buffer (llama.cpp's `--no-repack`), bypassing the
    /// extra buffer types (AMX, CPU_REPACK) that would otherwise take the weights they support.
    pub fn with_no_repack(self, no_repack: bool) -> Result<Runtime> {
        if no_repack && self.gpu_layers > 0 {
            bail!("--no-repack keeps every weight in CPU memory: it cannot go with --gpu-layers");
        }
        if no_repack {
            // llama-cpp-2 cannot set llama_model_params.use_extra_bufts, and a tensor override
            // to the CPU buffer still picks the extra buffer types; the patched llama.cpp reads
            // the environment name of llama.cpp's own --no-repack instead (vendor/llama.cpp.patch).
            // Set before any model loads, while no other thread reads the environment.
            std::env::set_var("LLAMA_ARG_REPACK", "0");
        }
        Ok(self)
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

    /// The CPU paths of this build and machine (ggml's compiled-in and detected SIMD features,
    /// e.g. `AVX2 AVX512 AVX512_VNNI AMX_INT8`), and the buffers holding the weights of the models
    /// loaded since the last call (`AMX 45.50 MiB, CPU_Mapped 93.78 MiB`): which kernels ran.
    pub fn cpu_paths() -> String {
        let info = Self::system_info();
        let simd: Vec<&str> = info
            .split('|')
            .filter_map(|f| f.trim().strip_suffix("= 1").map(str::trim))
            .map(|f| f.rsplit(':').next().unwrap_or(f).trim())
            .filter(|f| SIMD_FEATURES.contains(f))
            .collect();
        let buffers: Vec<String> = log::take_weight_buffers()
            .iter()
            .map(|b| format!("{} {:.2} MiB", b.name, b.mib))
            .collect();
        format!(
            "{} | weights in {}",
            if simd.is_empty() {
                "scalar".to_string()
            } else {
                simd.join(" ")
            },
            if buffers.is_empty() {
                "-".to_string()
            } else {
                buffers.join(", ")
            }
        )
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

/// ggml's feature names (ggml-cpu.cpp) that pick a kernel family; OPENMP, REPACK and the like
/// are not kernels.
const SIMD_FEATURES: [&str; 16] = [
    "SSE3",
    "AVX",
    "AVX_VNNI",
    "AVX2",
    "F16C",
    "FMA",
    "AVX512",
    "AVX512_VBMI",
    "AVX512_VNNI",
    "AVX512_BF16",
    "AMX_INT8",
    "NEON",
    "ARM_FMA",
    "DOTPROD",
    "SVE",
    "MATMUL_INT8",
];

/// The thread count: all cores unless told otherwise (llama.cpp's default of 4 oversubscribes
/// small machines).
pub fn threads(requested: Option<usize>) -> i32 {
    requested.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())) as i32
}
