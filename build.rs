//! Builds the llama.cpp runtime with the APIQ2 type.
//!
//! llama-cpp-sys-2 always compiles its own, unpatched copy of llama.cpp, and cargo offers no way
//! to change the sources of a registry crate. So this script takes that same pinned source
//! (found through the CMake cache of llama-cpp-sys-2's build, whose `links = "llama"` makes
//! cargo run it first), copies it into OUT_DIR, applies `vendor/llama.cpp.patch` and adds
//! `vendor/ggml-apiq2/`, and builds it with the options llama-cpp-sys-2 uses. The patched
//! libraries are linked whole and ahead of llama-cpp-sys-2's, so every llama_* and ggml_*
//! symbol resolves to the patched build and the unpatched archives contribute nothing.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use diffy::patch_set::{FileOperation, ParseOptions, PatchSet};

const PATCH: &str = "vendor/llama.cpp.patch";
const KERNELS: &str = "vendor/ggml-apiq2";
/// CMake library name → the name it is linked under (distinct from llama-cpp-sys-2's).
const LIBS: [(&str, &str); 4] = [
    ("llama", "apiq_llama"),
    ("ggml", "apiq_ggml"),
    ("ggml-cpu", "apiq_ggml_cpu"),
    ("ggml-base", "apiq_ggml_base"),
];
/// With the `cuda` feature: ggml's CUDA backend with our kernels (vendor/ggml-apiq2/*.cuh).
const CUDA_LIB: (&str, &str) = ("ggml-cuda", "apiq_ggml_cuda");

fn cuda() -> bool {
    env::var_os("CARGO_FEATURE_CUDA").is_some()
}

/// The patched libraries of this build.
fn libs() -> Vec<(&'static str, &'static str)> {
    let mut v = LIBS.to_vec();
    if cuda() {
        v.push(CUDA_LIB);
    }
    v
}

/// Our CUDA kernels (feature `cuda`), each compiled to `OUT_DIR/cuda/NAME.fatbin`.
const CUDA_SOURCES: [&str; 4] = [
    "src/quant/fake_quant.cu",
    "src/nn/causal_softmax.cu",
    "src/apiq/adamw.cu",
    "src/apiq/step_ops.cu",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={PATCH}");
    println!("cargo:rerun-if-changed={KERNELS}");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    if cuda() {
        compile_cuda(&out);
    }
    if env::var_os("CARGO_FEATURE_NCCL").is_some() {
        link_nccl();
    }
    build_llama(&out);
}

/// `--features nccl`: cudarc links libnccl from the toolkit's folders; NCCL_LIB_DIR adds one
/// (scripts/setup-nccl.sh fills one from PyPI's nvidia-nccl-cu13).
fn link_nccl() {
    println!("cargo:rerun-if-env-changed=NCCL_LIB_DIR");
    if let Some(dir) = env::var_os("NCCL_LIB_DIR") {
        println!(
            "cargo:rustc-link-search=native={}",
            Path::new(&dir).display()
        );
    }
}

/// Where a CUDA toolkit may be named, in order.
const CUDA_ROOT_VARS: [&str; 3] = ["CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"];

/// nvcc from $NVCC, the PATH, or one of `CUDA_ROOT_VARS`.
fn nvcc() -> PathBuf {
    if let Some(p) = env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    let on_path = env::var_os("PATH")
        .into_iter()
        .flat_map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| {
            CUDA_ROOT_VARS
                .iter()
                .filter_map(env::var_os)
                .map(|d| PathBuf::from(d).join("bin/nvcc"))
                .find(|p| p.is_file())
        })
        .expect("the cuda feature needs nvcc (set NVCC, or put it on the PATH)")
}

/// Machine code (SASS) for each architecture of `APIQ_CUDA_ARCHS` (comma-separated compute
/// capabilities, e.g. `80,90`; default: `CUDA_COMPUTE_CAP`, which candle's build reads too,
/// else 90), plus PTX of the newest for later GPUs: no JIT at load time on the listed ones.
fn cuda_archs() -> Vec<String> {
    println!("cargo:rerun-if-env-changed=APIQ_CUDA_ARCHS");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let archs = env::var("APIQ_CUDA_ARCHS")
        .or_else(|_| env::var("CUDA_COMPUTE_CAP"))
        .unwrap_or_else(|_| "90".into());
    archs
        .split(',')
        .map(|a| a.trim().replace('.', ""))
        .filter(|a| !a.is_empty())
        .collect()
}

fn compile_cuda(out: &Path) {
    println!("cargo:rerun-if-env-changed=NVCC");
    let archs = cuda_archs();
    let dir = out.join("cuda");
    fs::create_dir_all(&dir).expect("creating OUT_DIR/cuda");
    let nvcc = nvcc();
    for src in CUDA_SOURCES {
        println!("cargo:rerun-if-changed={src}");
        let name = Path::new(src).file_stem().unwrap().to_str().unwrap();
        let mut cmd = std::process::Command::new(&nvcc);
        cmd.args(["-fatbin", "-O3", "-std=c++17", "-o"])
            .arg(dir.join(format!("{name}.fatbin")))
            .arg(src);
        for a in &archs {
            cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
        }
        let newest = archs.iter().max_by_key(|a| a.parse::<u32>().unwrap_or(0));
        if let Some(a) = newest {
            cmd.arg(format!("-gencode=arch=compute_{a},code=compute_{a}"));
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {src}");
    }
}

/// A digest of everything the patched llama.cpp build depends on, so that a rerun of this
/// script for another reason (the CUDA kernels) does not rebuild it.
fn llama_inputs(pristine: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pristine.hash(&mut h);
    fs::read(PATCH).expect("reading the patch").hash(&mut h);
    let mut kernels: Vec<PathBuf> = fs::read_dir(KERNELS)
        .expect("reading vendor/ggml-apiq2")
        .map(|e| e.expect("entry").path())
        .collect();
    kernels.sort();
    for k in kernels {
        k.hash(&mut h);
        fs::read(&k).expect("reading a kernel file").hash(&mut h);
    }
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_CFG_TARGET_FEATURE",
        "PROFILE",
        "CARGO_FEATURE_CUDA",
    ] {
        env::var(var).unwrap_or_default().hash(&mut h);
    }
    if cuda() {
        cuda_archs().hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

fn link_llama(libdir: &Path) {
    println!("cargo:rustc-link-search=native={}", libdir.display());
    for (_, link_name) in libs() {
        println!("cargo:rustc-link-lib=static:+whole-archive={link_name}");
    }
    if cuda() {
        // ggml-cuda's own dependencies: the runtime, cuBLAS and the driver (the stub at link
        // time; the real one is loaded at start).
        let root = cuda_root();
        for dir in ["lib64", "lib", "lib64/stubs", "lib/stubs"] {
            let d = root.join(dir);
            if d.is_dir() {
                println!("cargo:rustc-link-search=native={}", d.display());
            }
        }
        for lib in ["cudart", "cublas", "cublasLt", "cuda"] {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }
}

/// The CUDA toolkit: one of `CUDA_ROOT_VARS`, else the folder above nvcc's.
fn cuda_root() -> PathBuf {
    CUDA_ROOT_VARS
        .iter()
        .filter_map(env::var_os)
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(|| {
            let nvcc = nvcc().canonicalize().expect("nvcc's path");
            nvcc.ancestors()
                .nth(2)
                .expect("nvcc in TOOLKIT/bin")
                .to_path_buf()
        })
}

fn build_llama(out: &Path) {
    let pristine = pristine_source();
    let libdir = out.join("apiq-libs");
    let stamp = libdir.join("inputs");
    let inputs = llama_inputs(&pristine);
    if fs::read_to_string(&stamp).is_ok_and(|s| s == inputs) {
        link_llama(&libdir);
        return;
    }
    let tree = out.join("llama.cpp");
    if tree.exists() {
        fs::remove_dir_all(&tree).expect("clearing the previous patched tree");
    }
    copy_tree(&pristine, &tree);
    apply_patch(
        &tree,
        &fs::read_to_string(PATCH).expect("reading vendor/llama.cpp.patch"),
    );
    let kernels = tree.join("ggml/src/ggml-apiq2");
    fs::create_dir_all(&kernels).expect("creating ggml-apiq2");
    for entry in fs::read_dir(KERNELS).expect("reading vendor/ggml-apiq2") {
        let path = entry.expect("vendor/ggml-apiq2 entry").path();
        fs::copy(&path, kernels.join(path.file_name().unwrap())).expect("copying a kernel file");
    }

    let dst = configure(&tree).build();

    fs::create_dir_all(&libdir).expect("creating apiq-libs");
    for (cmake_name, link_name) in libs() {
        let built = ["lib", "lib64"]
            .iter()
            .map(|d| dst.join(d).join(format!("lib{cmake_name}.a")))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("lib{cmake_name}.a not built under {}", dst.display()));
        fs::copy(&built, libdir.join(format!("lib{link_name}.a"))).expect("copying a library");
    }
    fs::write(&stamp, inputs).expect("writing the build stamp");
    link_llama(&libdir);
}

/// The llama.cpp tree llama-cpp-sys-2 built, read from its CMake cache.
fn pristine_source() -> PathBuf {
    let cmake_dir = env::var("DEP_LLAMA_GGML_CMAKE_DIR")
        .expect("llama-cpp-sys-2 did not report its build (DEP_LLAMA_GGML_CMAKE_DIR)");
    // <OUT_DIR of llama-cpp-sys-2>/lib/cmake → <OUT_DIR>/build/CMakeCache.txt
    let sys_out = Path::new(&cmake_dir)
        .ancestors()
        .nth(2)
        .expect("cmake dir depth");
    let cache = sys_out.join("build/CMakeCache.txt");
    let text =
        fs::read_to_string(&cache).unwrap_or_else(|e| panic!("reading {}: {e}", cache.display()));
    let src = text
        .lines()
        .find_map(|l| l.strip_prefix("CMAKE_HOME_DIRECTORY:INTERNAL="))
        .unwrap_or_else(|| panic!("no CMAKE_HOME_DIRECTORY in {}", cache.display()));
    PathBuf::from(src)
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("creating a directory");
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())) {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copying a source file");
            // registry sources are read-only; the patched ones must be writable
            let mut perms = fs::metadata(&target).expect("metadata").permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            fs::set_permissions(&target, perms).expect("making a copy writable");
        }
    }
}

fn apply_patch(tree: &Path, patch: &str) {
    for file in PatchSet::parse(patch, ParseOptions::unidiff()) {
        let file = file.expect("vendor/llama.cpp.patch does not parse");
        let path = match file.operation().strip_prefix(1) {
            FileOperation::Modify { modified, .. } => modified.into_owned(),
            other => panic!("vendor/llama.cpp.patch may only modify files, not {other:?}"),
        };
        let text = file.patch().as_text().expect("a text patch");
        let target = tree.join(&path);
        let base = fs::read_to_string(&target)
            .unwrap_or_else(|e| panic!("reading {}: {e}", target.display()));
        let patched = diffy::apply(&base, text)
            .unwrap_or_else(|e| panic!("vendor/llama.cpp.patch does not apply to {path}: {e}"));
        fs::write(&target, patched).expect("writing a patched file");
    }
}

/// The options llama-cpp-sys-2 builds with (CPU, static, OpenMP, no tools), so both halves of
/// the program agree on every struct and flag.
fn configure(tree: &Path) -> cmake::Config {
    let mut cfg = cmake::Config::new(tree);
    for (key, value) in [
        ("LLAMA_BUILD_TESTS", "OFF"),
        ("LLAMA_BUILD_EXAMPLES", "OFF"),
        ("LLAMA_BUILD_SERVER", "OFF"),
        ("LLAMA_BUILD_TOOLS", "OFF"),
        ("LLAMA_BUILD_APP", "OFF"),
        ("LLAMA_BUILD_COMMON", "OFF"),
        ("LLAMA_CURL", "OFF"),
        ("BUILD_SHARED_LIBS", "OFF"),
        ("GGML_OPENMP", "ON"),
    ] {
        cfg.define(key, value);
    }
    if cuda() {
        // Flash attention's template instances are 82 of ggml-cuda's 189 files and the runtime's
        // perplexity and generation do not need them (llama.cpp falls back to its plain path).
        cfg.define("GGML_CUDA", "ON")
            .define("GGML_CUDA_FA", "OFF")
            .define("CMAKE_CUDA_ARCHITECTURES", cuda_archs().join(";"))
            .define("CMAKE_CUDA_COMPILER", nvcc())
            .define("CUDAToolkit_ROOT", cuda_root());
    } else {
        cfg.define("GGML_CUDA", "OFF");
    }
    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let target_cpu = rustflags
        .split('\x1f')
        .find_map(|f| f.split("target-cpu=").nth(1).map(str::to_owned));
    if target_cpu.as_deref() == Some("native") {
        cfg.define("GGML_NATIVE", "ON");
    } else {
        cfg.define("GGML_NATIVE", "OFF");
        if let Some(cpu) = &target_cpu {
            cfg.cflag(format!("-march={cpu}"));
            cfg.cxxflag(format!("-march={cpu}"));
        }
        let features = env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
        for feature in features.split(',') {
            let option = match feature {
                "avx" => "GGML_AVX",
                "avx2" => "GGML_AVX2",
                "avx512bf16" => "GGML_AVX512_BF16",
                "avx512vbmi" => "GGML_AVX512_VBMI",
                "avx512vnni" => "GGML_AVX512_VNNI",
                "avxvnni" => "GGML_AVX_VNNI",
                "bmi2" => "GGML_BMI2",
                "f16c" => "GGML_F16C",
                "fma" => "GGML_FMA",
                "sse4.2" => "GGML_SSE42",
                _ => continue,
            };
            cfg.define(option, "ON");
        }
    }
    cfg.profile("Release");
    cfg
}
