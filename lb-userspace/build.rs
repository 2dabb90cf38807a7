//! Builds the XDP object (lb-ebpf) with nightly + bpf-linker and leaves it in OUT_DIR,
//! where `dataplane` embeds it. With AYA_BUILD_SKIP=1 (cargo check/clippy on a machine
//! without bpf-linker) an empty stub is written instead, and loading it fails clearly.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        for object in ["veer", "veer-pass", "veer-bench"] {
            fs::write(out_dir.join(object), []).context("write stub eBPF object")?;
        }
        return Ok(());
    }
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?).join("../lb-ebpf");
    println!("cargo:rerun-if-changed={}", root.join("../lb-common/src").display());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root.to_str().context("non-UTF-8 path")?,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
