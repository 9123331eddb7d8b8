//! Compiles the gRPC protocol definitions under `src/wire/proto/` without `protoc`:
//! `protox` (pure Rust) parses them into a `FileDescriptorSet` (it ships the
//! google/protobuf well-known types), and `tonic-prost-build` generates prost
//! messages plus tonic clients and servers into `OUT_DIR`.
//!
//! Output files are named after the proto package (`spire.api.types.rs`,
//! `spire.api.server.svid.v1.rs`, `cairn.api.bundlewatch.v1.rs`, ...). The
//! SPIFFE Workload API has no package (its gRPC paths must be
//! `/SpiffeWorkloadAPI/<Method>`), so its output is renamed from `_.rs` to
//! `workload.rs`; include it with `tonic::include_proto!("workload")`.

use std::error::Error;
use std::path::{Path, PathBuf};

const PROTO_ROOT: &str = "src/wire/proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");

    let mut files = Vec::new();
    collect_protos(Path::new(PROTO_ROOT), &mut files)?;
    files.sort();
    for f in &files {
        // Directory mtimes do not change when a file is edited in place.
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [PROTO_ROOT])?;

    let mut config = tonic_prost_build::Config::new();
    config.default_package_filename("workload");

    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds_with_config(fds, config)?;

    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
