//! Embeds kernels/*.cu (and kernels/common.cuh) into the binary as a table of sources, so the CUDA backend can
//! hand them to NVRTC at run time. Needs no CUDA toolkit, no nvcc and no GPU.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    let mut modules: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("kernels/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .map(|p| {
            let name = p
                .file_stem()
                .expect("a .cu file has a stem")
                .to_string_lossy()
                .into_owned();
            (name, p.display().to_string())
        })
        .collect();
    // Sorted: the table (and `cliprt kernels --list`) does not depend on directory order.
    modules.sort();
    let mut out = String::new();
    let common = dir.join("common.cuh");
    writeln!(out, "/// kernels/common.cuh, prepended to every module.").unwrap();
    writeln!(
        out,
        "pub const COMMON: &str = include_str!({:?});",
        common.display().to_string()
    )
    .unwrap();
    writeln!(
        out,
        "/// (module name, source) for every kernels/*.cu, sorted by name."
    )
    .unwrap();
    writeln!(out, "pub const MODULES: &[(&str, &str)] = &[").unwrap();
    for (name, path) in &modules {
        writeln!(out, "    ({name:?}, include_str!({path:?})),").unwrap();
    }
    writeln!(out, "];").unwrap();
    let dest =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernel_sources.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}
