//! Developer tasks: `cargo xtask <task>`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  build-ebpf [--check]  build the kernel program and ship it as metadataproxy/ebpf/metadataproxy.bpf.o
                        (--check: build it and fail if it differs from the shipped object)
  test                  run the whole test suite (scripts/test.sh; needs root on Debian 12)
  bench [--profile] [--seconds N] [--only SCENARIO,...]
                        run the benchmarks (scripts/bench.sh; needs root on Debian 12): a table,
                        docs/bench/results.md and results.svg (--profile: docs/bench/profile.txt)";

/// Where the shipped kernel object lives, relative to the workspace root.
const SHIPPED: &str = "metadataproxy/ebpf/metadataproxy.bpf.o";
/// The toolchain that built the shipped object.
const SHIPPED_TOOLCHAIN: &str = "metadataproxy/ebpf/metadataproxy.bpf.toolchain";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build-ebpf") => build_ebpf(args.iter().any(|a| a == "--check")),
        Some("test") => run_script("scripts/test.sh", &[], "the test suite failed"),
        Some("bench") => run_script("scripts/bench.sh", &args[1..], "the benchmark failed"),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn run_script(script: &str, args: &[String], failed: &str) -> Result<(), String> {
    let status = Command::new("bash")
        .arg(script)
        .args(args)
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    status.success().then_some(()).ok_or_else(|| failed.into())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A toolchain that can build `core` for `bpfel-unknown-none`: it has the `core` source.
struct Toolchain {
    name: String,
    sysroot: PathBuf,
}

fn find_toolchain() -> Result<Toolchain, String> {
    let candidates: Vec<String> = match std::env::var("MP_EBPF_TOOLCHAIN") {
        Ok(t) => vec![t],
        Err(_) => vec!["nightly".into(), "debian-web".into()],
    };
    for name in &candidates {
        let Some(sysroot) =
            output(Command::new("rustup").args(["run", name, "rustc", "--print", "sysroot"]))
        else {
            continue;
        };
        let sysroot = PathBuf::from(sysroot);
        if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
            return Ok(Toolchain {
                name: name.clone(),
                sysroot,
            });
        }
    }
    Err(format!(
        "no Rust toolchain with the `core` source (rust-src) was found (tried: {}).\n\
         The kernel program needs one to build `core` for bpfel-unknown-none. Either:\n  \
         - rustup toolchain install nightly --component rust-src   (where rustup can download), or\n  \
         - bash scripts/ebpf-toolchain.sh   (Debian: rustc-web + rust-web-src, linked as `debian-web`)\n\
         Set MP_EBPF_TOOLCHAIN to pick another toolchain name.",
        candidates.join(", ")
    ))
}

fn bpf_linker_version() -> Result<String, String> {
    output(Command::new("bpf-linker").arg("--version")).ok_or_else(|| {
        "bpf-linker was not found on PATH. Install it built against the same LLVM major as \
         the toolchain's rustc: `bash scripts/ebpf-toolchain.sh` does it on Debian \
         (cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-<N>)."
            .to_string()
    })
}

fn toolchain_description(tc: &Toolchain, linker: &str) -> Result<String, String> {
    let vv = output(Command::new("rustup").args(["run", &tc.name, "rustc", "-vV"]))
        .ok_or("rustc -vV failed")?;
    let keep = |prefix: &str| {
        vv.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_default()
            .to_string()
    };
    Ok(format!(
        "{}\n{}\n{}\nbpf-linker: {}\n",
        vv.lines().next().unwrap_or_default(),
        keep("commit-hash:"),
        keep("LLVM version:"),
        linker.trim_start_matches("bpf-linker ")
    ))
}

/// Builds the kernel object reproducibly and returns its bytes and the toolchain description.
fn build_object() -> Result<(Vec<u8>, String), String> {
    let root = root();
    let tc = find_toolchain()?;
    let linker = bpf_linker_version()?;
    let description = toolchain_description(&tc, &linker)?;
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
        });
    // Paths differ between checkouts and machines; remapped, the object depends only on the
    // source and the toolchain.
    let flags = [
        "--cfg=bpf_target_arch=\"x86_64\"".to_string(),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        format!("--remap-path-prefix={}=/metadataproxy", root.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!(
            "--remap-path-prefix={}=/rustc-src",
            tc.sysroot.join("lib/rustlib/src/rust").display()
        ),
    ];
    let target_dir = root.join("target/ebpf");
    eprintln!(
        "xtask: building the kernel program with toolchain {}",
        tc.name
    );
    let status = Command::new("cargo")
        .arg(format!("+{}", tc.name))
        .args([
            "build",
            "--locked",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--package",
            "metadataproxy-ebpf",
        ])
        .current_dir(&root)
        .arg("--target-dir")
        .arg(&target_dir)
        // Unlocks -Z on a stable-channel compiler (Debian's); harmless on nightly.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building the kernel program failed".into());
    }
    let built = target_dir.join("bpfel-unknown-none/release/metadataproxy-ebpf");
    let bytes = std::fs::read(&built).map_err(|e| format!("{}: {e}", built.display()))?;
    Ok((bytes, description))
}

fn build_ebpf(check: bool) -> Result<(), String> {
    let root = root();
    let (bytes, description) = build_object()?;
    let shipped = root.join(SHIPPED);
    let shipped_toolchain = root.join(SHIPPED_TOOLCHAIN);
    if check {
        let current = std::fs::read(&shipped).map_err(|e| format!("{SHIPPED}: {e}"))?;
        if current == bytes {
            eprintln!(
                "xtask: {SHIPPED} matches the source ({} bytes)",
                bytes.len()
            );
            return Ok(());
        }
        let recorded = std::fs::read_to_string(&shipped_toolchain).unwrap_or_default();
        return Err(format!(
            "{SHIPPED} does not match what the current source builds \
             ({} bytes shipped, {} built).\n\
             shipped object's toolchain:\n{}\nthis build's toolchain:\n{}\n\
             Regenerate it with `cargo xtask build-ebpf` and commit {SHIPPED} and \
             {SHIPPED_TOOLCHAIN}.",
            current.len(),
            bytes.len(),
            indent(&recorded),
            indent(&description)
        ));
    }
    std::fs::create_dir_all(shipped.parent().expect("has a parent")).map_err(|e| e.to_string())?;
    std::fs::write(&shipped, &bytes).map_err(|e| format!("{SHIPPED}: {e}"))?;
    std::fs::write(&shipped_toolchain, &description)
        .map_err(|e| format!("{SHIPPED_TOOLCHAIN}: {e}"))?;
    eprintln!(
        "xtask: wrote {SHIPPED} ({} bytes) and {SHIPPED_TOOLCHAIN}",
        bytes.len()
    );
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}
