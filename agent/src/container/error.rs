//! Errors of the container layer, mapped onto ttrpc status codes for the host.

use ttrpc::Code;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {0:?} not found")]
    NoContainer(String),
    #[error("process {exec_id:?} of container {container_id:?} not found")]
    NoProcess {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Runtime {
        context: String,
        source: libcontainer::error::LibcontainerError,
    },
    #[error("{0}")]
    Other(String),
}

impl ContainerError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| ContainerError::Io { context, source }
    }

    pub fn runtime(
        context: impl Into<String>,
    ) -> impl FnOnce(libcontainer::error::LibcontainerError) -> Self {
        let context = context.into();
        move |source| ContainerError::Runtime { context, source }
    }

    /// [`Self::runtime`] with the errors the child processes logged (`child_errors::capture`),
    /// which libcontainer's own error leaves out.
    pub fn runtime_in_child(
        context: impl Into<String>,
        child: String,
    ) -> impl FnOnce(libcontainer::error::LibcontainerError) -> Self {
        let mut context = context.into();
        if !child.is_empty() {
            context = format!("{context} (in the container's process: {child})");
        }
        move |source| ContainerError::Runtime { context, source }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::NoContainer(_) | Self::NoProcess { .. } => Code::NOT_FOUND,
            Self::Exists(_) => Code::ALREADY_EXISTS,
            Self::Invalid(_) => Code::INVALID_ARGUMENT,
            Self::Precondition(_) => Code::FAILED_PRECONDITION,
            Self::Io { .. } | Self::Runtime { .. } | Self::Other(_) => Code::INTERNAL,
        }
    }
}

impl From<ContainerError> for ttrpc::Error {
    fn from(e: ContainerError) -> Self {
        // The full chain: libcontainer's errors carry the cause (missing binary, bad user, ...).
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            let s = s.to_string();
            if !msg.contains(&s) {
                msg.push_str(": ");
                msg.push_str(&s);
            }
            src = s_source(src);
        }
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), msg))
    }
}

fn s_source<'a>(
    e: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    e.and_then(|e| e.source())
}

pub type Result<T> = std::result::Result<T, ContainerError>;
