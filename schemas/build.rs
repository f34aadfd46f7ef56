//! Compiles proto/herald/v1/*.proto with protox (pure Rust, no protoc on the
//! machine), generates prost types and their proto3 JSON mapping (pbjson).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["uplink", "downlink", "payments", "printing", "ops"]
        .map(|name| format!("proto/herald/v1/{name}.proto"));
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(&files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("herald_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_protos(&files, &["proto"])?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor_path)?)?
        // Evolution rule: readers accept fields they do not know yet.
        .ignore_unknown_fields()
        .build(&[".herald.v1"])?;
    Ok(())
}
