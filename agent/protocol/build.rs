use std::{fs, path::Path};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: &[&str] = &["protos/agent.proto", "protos/events.proto"];

fn main() {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    Codegen::new()
        .out_dir(&out)
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .customize(Customize::default())
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("ttrpc codegen of agent protos");

    // The generated files carry inner attributes and inner doc comments, which `include!` inside a
    // `mod { }` does not accept: drop them (lib.rs sets the lints for the generated modules).
    for entry in fs::read_dir(&out).expect("read OUT_DIR") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            strip_inner_attributes(&path);
        }
    }
}

fn strip_inner_attributes(path: &Path) {
    let text = fs::read_to_string(path).expect("read generated file");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
        .collect();
    fs::write(path, kept.join("\n")).expect("write generated file");
}
