//! Generates the protobuf types of `dataweaver.proto` into `OUT_DIR`, with protox
//! as the parser (pure Rust: no `protoc` to install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=dataweaver.proto");
    let fds = protox::compile(["dataweaver.proto"], ["."])?;
    prost_build::Config::new()
        // Decoding from a `Bytes` buffer slices these instead of copying them: a record's
        // payload, and the batch a journal entry keeps as it came off the wire.
        .bytes([
            ".dataweaver.wire.v1.Record.payload",
            ".dataweaver.wire.v1.JournalEntry.batch",
        ])
        .compile_fds(fds)?;
    Ok(())
}
