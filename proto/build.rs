//! Generates the gRPC code with the vendored `protoc`, so a fresh machine needs no install.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    config.bytes(["."]);
    tonic_prost_build::configure().compile_with_config(config, &["tessera.proto"], &["."])?;
    println!("cargo:rerun-if-changed=tessera.proto");
    Ok(())
}
