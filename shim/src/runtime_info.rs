//! `containerd-shim-myvm-v2 -info`: what containerd 2.x runs before it starts a task (its
//! introspection service, `PluginInfo` of the task runtime). It writes the task's runtime
//! options, a marshalled `google.protobuf.Any`, to the shim's stdin and reads a
//! `containerd.types.RuntimeInfo` protobuf from its stdout. No namespace, id or socket is given,
//! so this is answered before the shim library parses its flags (it would refuse the call).

use std::io::{Read, Write};

pub use containerd_shim::protos::types::introspection::RuntimeInfo;
use containerd_shim::protos::{
    protobuf::{well_known_types::any::Any, Message, MessageField},
    types::introspection::RuntimeVersion,
};

/// The type URL containerd expects for OCI runtime features (runtime-spec `features.md`).
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// Whether the command line asks for `-info` (Go flag syntax: `-info`, `--info`, `-info=true`).
pub fn requested(args: &[String]) -> bool {
    args.iter().skip(1).any(|a| {
        matches!(
            a.as_str(),
            "-info" | "--info" | "-info=true" | "--info=true"
        )
    })
}

/// The runtime info for `options` (the bytes containerd wrote on stdin: a marshalled Any, or
/// nothing), echoed back as containerd's own shims do.
pub fn runtime_info(options: &[u8]) -> Result<RuntimeInfo, String> {
    let options = if options.is_empty() {
        MessageField::none()
    } else {
        let any = Any::parse_from_bytes(options)
            .map_err(|e| format!("the options on stdin are not a protobuf Any: {e}"))?;
        MessageField::some(any)
    };
    // What the guest's runtime (youki's libcontainer, OCI runtime-spec 1.x) implements.
    let features = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "annotations": {"io.containerd.myvm.sandbox": "microvm"},
    });
    Ok(RuntimeInfo {
        name: crate::shim::RUNTIME_ID.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }),
        options,
        features: MessageField::some(Any {
            type_url: FEATURES_TYPE_URL.to_string(),
            value: features.to_string().into_bytes(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Answers `-info`: options from stdin, runtime info on stdout. The process's exit code.
pub fn run() -> i32 {
    let mut options = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut options) {
        eprintln!("containerd-shim-myvm-v2 -info: reading stdin: {e}");
        return 1;
    }
    let bytes = match runtime_info(&options).and_then(|i| {
        i.write_to_bytes()
            .map_err(|e| format!("encoding RuntimeInfo: {e}"))
    }) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("containerd-shim-myvm-v2 -info: {e}");
            return 1;
        }
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(&bytes).and_then(|_| out.flush()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("containerd-shim-myvm-v2 -info: writing stdout: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_flag_forms() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(requested(&args(&["shim", "-info"])));
        assert!(requested(&args(&["shim", "--info"])));
        assert!(!requested(&args(&[
            "shim",
            "-namespace",
            "k8s.io",
            "start"
        ])));
        assert!(!requested(&args(&["-info"])), "argv[0] is not a flag");
    }

    #[test]
    fn options_are_echoed_and_garbage_refused() {
        let info = runtime_info(&[]).unwrap();
        assert_eq!(info.name, "io.containerd.myvm.v2");
        assert!(info.options.is_none());
        let any = Any {
            type_url: "types.containerd.io/x".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        let info = runtime_info(&any.write_to_bytes().unwrap()).unwrap();
        assert_eq!(info.options.type_url, "types.containerd.io/x");
        assert_eq!(info.options.value, vec![1, 2, 3]);
        assert!(runtime_info(&[0xff, 0xff, 0xff]).is_err());
    }
}
