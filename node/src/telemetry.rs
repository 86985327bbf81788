//! Process-wide logging and tracing setup; the only place that configures OpenTelemetry
//! (STYLE.md §9: exporters are configured only in `node`).
//!
//! - Logs: `tracing-subscriber` to stderr (stdout stays free for command output such as
//!   `mimid config`), JSON lines by default or human-readable text, filtered by the configured
//!   level, which `RUST_LOG` overrides when set.
//! - Spans: every `tracing` span also becomes an OpenTelemetry span through
//!   `tracing-opentelemetry`, on an SDK tracer provider carrying `service.name`, so trace
//!   context exists for propagation across providers and nodes.
//!
//! Export is a later issue: `telemetry.otlp_endpoint` is accepted and validated, but this binary
//! has no OTLP exporter yet (it would pull an HTTP client and protobuf stack into the build), so
//! when it is set [`init`] logs a warning. Without an exporter, root spans are not sampled
//! (`ParentBased(AlwaysOff)`): recording span data nobody reads is pure overhead; trace context
//! still flows.

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings, TelemetrySettings};

/// The environment variable that overrides `log.level`.
pub const RUST_LOG: &str = "RUST_LOG";

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter from `RUST_LOG` or `log.level` does not parse.
    #[error("{source_name} is not a valid tracing filter: {reason}")]
    Filter {
        /// `RUST_LOG` or `log.level`.
        source_name: &'static str,
        /// The parser's reason.
        reason: String,
    },
}

/// Keeps the tracer provider alive; dropping it flushes and shuts the provider down.
#[must_use = "dropping the guard shuts tracing down"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

/// Whether [`init`] installed the subscriber or found one already installed (tests call it
/// repeatedly; only the first call in a process takes effect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// This call installed the global subscriber.
    Now,
    /// A global subscriber was already set; this call changed nothing.
    Already,
}

/// Installs the global `tracing` subscriber with logging and OpenTelemetry layers. Reads
/// `RUST_LOG` from the process environment. Safe to call more than once.
pub fn init(
    log: &LogSettings,
    telemetry: &TelemetrySettings,
) -> Result<(TelemetryGuard, Installed), TelemetryError> {
    let rust_log = std::env::var(RUST_LOG).ok();
    let filter = build_filter(&log.level, rust_log.as_deref())?;

    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
        .with_resource(
            Resource::builder()
                .with_service_name(telemetry.service_name.clone())
                .build(),
        )
        .build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("mimid"));

    let (json, text) = match log.format {
        LogFormat::Json => (
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Text => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let installed = match tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(otel)
        .try_init()
    {
        Ok(()) => Installed::Now,
        Err(_) => Installed::Already,
    };
    if let Some(endpoint) = &telemetry.otlp_endpoint {
        tracing::warn!(
            %endpoint,
            "telemetry.otlp_endpoint is set, but this build has no OTLP exporter yet; spans are not exported"
        );
    }
    Ok((TelemetryGuard { provider }, installed))
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            // The subscriber may already be gone; stderr is the last resort.
            eprintln!("mimid: tracer provider shutdown failed: {err}");
        }
    }
}

/// The filter: `RUST_LOG` when it is set and not blank, otherwise the configured level.
fn build_filter(level: &str, rust_log: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    let (source_name, directives) = match rust_log {
        Some(value) if !value.trim().is_empty() => (RUST_LOG, value),
        _ => ("log.level", level),
    };
    EnvFilter::try_new(directives).map_err(|err| TelemetryError::Filter {
        source_name,
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_configured_level() {
        let filter = build_filter("info", Some("debug")).unwrap();
        assert_eq!(filter.to_string(), "debug");
        let filter = build_filter("warn", None).unwrap();
        assert_eq!(filter.to_string(), "warn");
        let filter = build_filter("warn", Some("  ")).unwrap();
        assert_eq!(filter.to_string(), "warn", "a blank RUST_LOG is ignored");
    }

    #[test]
    fn a_bad_rust_log_names_its_source() {
        let err = build_filter("info", Some("mimid=loud")).unwrap_err();
        assert!(err.to_string().starts_with("RUST_LOG"), "{err}");
        let err = build_filter("mimid=loud", None).unwrap_err();
        assert!(err.to_string().starts_with("log.level"), "{err}");
    }

    #[test]
    fn init_is_safe_to_call_twice() {
        let log = LogSettings {
            format: LogFormat::Text,
            level: "warn".into(),
        };
        let telemetry = TelemetrySettings::default();
        let (first_guard, _) = init(&log, &telemetry).expect("first init");
        let (second_guard, second) = init(&log, &telemetry).expect("second init");
        assert_eq!(second, Installed::Already);
        drop(second_guard);
        drop(first_guard);
    }
}
