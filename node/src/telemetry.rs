//! Process-wide logging and tracing setup; the only place that configures OpenTelemetry
//! (STYLE.md §9: exporters are configured only in `node`).
//!
//! - Logs: `tracing-subscriber` to stderr (stdout stays free for command output such as
//!   `mimid config`), JSON lines by default or human-readable text, filtered by the configured
//!   level, which `RUST_LOG` overrides when set. The same filter decides which spans exist:
//!   request spans are INFO, so `log.level = "warn"` turns tracing off too.
//! - Spans: every `tracing` span also becomes an OpenTelemetry span through
//!   `tracing-opentelemetry`, on an SDK tracer provider carrying `service.name`.
//! - Propagation (W3C Trace Context): [`inject_context`] writes a span's `traceparent` and
//!   `tracestate` into outgoing server-to-server requests; [`set_remote_parent`] makes an
//!   incoming request's span the child of the caller's, so one trace crosses providers. The
//!   node-to-node RPC of forwarded proposals carries the same two fields as name-value pairs
//!   ([`trace_fields`], [`set_remote_parent_from_fields`]), so a proposal forwarded to its
//!   shard's leader stays in the client request's trace.
//! - Export: with `telemetry.otlp_endpoint` set, spans go as OTLP/HTTP protobuf to
//!   `<endpoint>/v1/traces` through a batch span processor that runs, with its HTTP client
//!   (hyper, HTTP/1.1, plain `http://`), on a one-thread tokio runtime of its own
//!   (`mimid-otlp`), so export neither waits for nor delays the node's workers and works
//!   whether or not a runtime exists when [`init`] runs. Sampling is then
//!   `ParentBased(AlwaysOn)`. Without an exporter, root spans are not sampled
//!   (`ParentBased(AlwaysOff)`): recording span data nobody reads is pure overhead; trace
//!   context still flows, and a caller's sampled flag is honoured.
//!
//! Batch bounds are the SDK's (queue 2048 spans, dropped beyond it and counted in its
//! shutdown warning; export every 5 s or per 512 spans), overridable with the standard
//! `OTEL_BSP_*` variables; an export attempt times out after 10 s (`OTEL_EXPORTER_OTLP_TIMEOUT`).
//! A collector that is down costs failed exports reported by the SDK as log events, never a
//! blocked request.

use std::io::IsTerminal as _;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracerProvider, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings, TelemetrySettings};

/// The environment variable that overrides `log.level`.
pub const RUST_LOG: &str = "RUST_LOG";

/// The OTLP/HTTP path of traces, appended to `telemetry.otlp_endpoint` (OTLP 1.x
/// "OTLP/HTTP Request").
pub const OTLP_TRACES_PATH: &str = "/v1/traces";

/// The thread of the export runtime.
const EXPORT_THREAD: &str = "mimid-otlp";

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
    /// The OTLP exporter for `telemetry.otlp_endpoint` cannot be built.
    #[error("telemetry.otlp_endpoint {endpoint:?}: {reason}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The export runtime's thread could not be started.
    #[error("cannot start the span export runtime")]
    Runtime(#[source] std::io::Error),
}

/// Keeps the tracer provider alive; dropping it exports what is still queued, then shuts the
/// provider and its export runtime down.
#[must_use = "dropping the guard shuts tracing down"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    /// The runtime of the batch span processor and its HTTP client (OTLP export only).
    runtime: Option<tokio::runtime::Runtime>,
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

/// Installs the global `tracing` subscriber with logging and OpenTelemetry layers, exporting
/// spans over OTLP when `telemetry.otlp_endpoint` is set. Reads `RUST_LOG` from the process
/// environment. Safe to call more than once.
pub fn init(
    log: &LogSettings,
    telemetry: &TelemetrySettings,
) -> Result<(TelemetryGuard, Installed), TelemetryError> {
    let filter = env_filter(log)?;
    let Some(endpoint) = &telemetry.otlp_endpoint else {
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .with_resource(resource(telemetry))
            .build();
        return Ok(install(log, filter, provider, None));
    };
    let url = traces_url(endpoint);
    let exporter_error = |reason: String| TelemetryError::Exporter {
        endpoint: endpoint.clone(),
        reason,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| exporter_error(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(EXPORT_THREAD)
        .enable_all()
        .build()
        .map_err(TelemetryError::Runtime)?;
    let processor = {
        // The processor spawns its worker (and the client its connections) on this runtime.
        let _entered = runtime.enter();
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_batch_config(BatchConfigBuilder::default().build())
            .build()
    };
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource(telemetry))
        .with_span_processor(processor)
        .build();
    let installed = install(log, filter, provider, Some(runtime));
    tracing::info!(%url, "exporting spans over OTLP/HTTP");
    Ok(installed)
}

/// [`init`] with every span handed to `exporter` as it ends (a simple span processor, sampling
/// `ParentBased(AlwaysOn)`) instead of OTLP; `telemetry.otlp_endpoint` is ignored. For tests,
/// e.g. with `opentelemetry_sdk`'s `InMemorySpanExporter`.
pub fn init_with_exporter<E: SpanExporter + 'static>(
    log: &LogSettings,
    telemetry: &TelemetrySettings,
    exporter: E,
) -> Result<(TelemetryGuard, Installed), TelemetryError> {
    let filter = env_filter(log)?;
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource(telemetry))
        .with_simple_exporter(exporter)
        .build();
    Ok(install(log, filter, provider, None))
}

impl TelemetryGuard {
    /// Exports every span that has ended so far and waits for the exporter's answer. Blocks
    /// the calling thread; do not call it from an async task's thread.
    pub fn flush(&self) -> Result<(), String> {
        self.provider.force_flush().map_err(|e| e.to_string())
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            // The subscriber may already be gone; stderr is the last resort.
            eprintln!("mimid: tracer provider shutdown failed: {err}");
        }
        if let Some(runtime) = self.runtime.take() {
            // The processor has exported and stopped; nothing of ours runs there any more.
            // Not `shutdown_timeout`: the guard may be dropped inside another runtime.
            runtime.shutdown_background();
        }
    }
}

/// `<endpoint>/v1/traces`, without a doubled slash.
fn traces_url(endpoint: &str) -> String {
    format!("{}{OTLP_TRACES_PATH}", endpoint.trim_end_matches('/'))
}

fn resource(telemetry: &TelemetrySettings) -> Resource {
    Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .build()
}

/// The filter of `log`, or of `RUST_LOG` from the process environment.
fn env_filter(log: &LogSettings) -> Result<EnvFilter, TelemetryError> {
    let rust_log = std::env::var(RUST_LOG).ok();
    build_filter(&log.level, rust_log.as_deref())
}

/// Installs the subscriber: `filter`, the log layer of `log.format`, and the OpenTelemetry
/// layer on `provider`.
fn install(
    log: &LogSettings,
    filter: EnvFilter,
    provider: SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
) -> (TelemetryGuard, Installed) {
    // Span start and end times are enough: busy/idle counters and thread names would cost
    // work on every poll and an allocation per span.
    let otel = tracing_opentelemetry::layer()
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_tracer(provider.tracer("mimid"));
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
    (TelemetryGuard { provider, runtime }, installed)
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

/// Writes `span`'s trace context into `headers` as W3C `traceparent` (and `tracestate` when
/// there is one), replacing any there. Writes nothing when the span is disabled by the filter
/// or no tracing subscriber is installed.
pub fn inject_context(span: &tracing::Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// Makes `span` the child of the remote span named by `headers`' W3C `traceparent` (and
/// `tracestate`), so the request's trace continues here. Call it before `span` is first
/// entered. A missing or malformed `traceparent` leaves `span` as it was (a new trace).
pub fn set_remote_parent(span: &tracing::Span, headers: &HeaderMap) {
    set_parent_from(span, &HeaderExtractor(headers));
}

/// `span`'s W3C trace context as name-value pairs (`traceparent`, and `tracestate` when there
/// is one), for carriers that are not HTTP headers (the node-to-node RPC,
/// `crate::cluster_net::forward`). Empty when the span is disabled by the filter or no tracing
/// subscriber is installed.
pub fn trace_fields(span: &tracing::Span) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut FieldsInjector(&mut fields));
    fields
}

/// [`set_remote_parent`] for the name-value pairs [`trace_fields`] wrote (names compared
/// without regard to ASCII case). Missing, malformed or unknown fields leave `span` as it was.
pub fn set_remote_parent_from_fields(span: &tracing::Span, fields: &[(String, String)]) {
    set_parent_from(span, &FieldsExtractor(fields));
}

/// Makes `span` the child of the remote span `carrier` names, when it names a valid one.
fn set_parent_from(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = TraceContextPropagator::new().extract(carrier);
    if parent.span().span_context().is_valid() {
        // Only fails if tracing is off for this span or the span has started: then it stays
        // a trace of its own.
        let _ = span.set_parent(parent);
    }
}

/// [`Injector`] over name-value pairs; a name written twice keeps its last value, and an empty
/// value is not written (an empty `tracestate` says nothing, W3C Trace Context §3.3).
struct FieldsInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for FieldsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            self.0.retain(|(name, _)| name != key);
            return;
        }
        match self.0.iter_mut().find(|(name, _)| name == key) {
            Some((_, old)) => *old = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }
}

/// [`Extractor`] over name-value pairs: the first pair whose name matches without regard to
/// ASCII case.
struct FieldsExtractor<'a>(&'a [(String, String)]);

impl Extractor for FieldsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// [`Injector`] over an HTTP header map; values that are not valid header values are
/// skipped (the propagator only writes ASCII).
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// [`Extractor`] over an HTTP header map; non-ASCII values read as absent.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
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

    #[test]
    fn spans_go_to_the_otlp_traces_path_of_the_endpoint() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://gateway/otlp"),
            "http://gateway/otlp/v1/traces"
        );
    }

    /// A subscriber of this thread only (the global one belongs to [`init`]), recording every
    /// span and exporting none.
    fn local_subscriber() -> impl tracing::Subscriber + Send + Sync {
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOn)
            .build();
        tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
    }

    fn span_context(span: &tracing::Span) -> opentelemetry::trace::SpanContext {
        span.context().span().span_context().clone()
    }

    #[test]
    fn w3c_trace_context_continues_the_callers_trace() {
        tracing::subscriber::with_default(local_subscriber(), || {
            let caller = tracing::info_span!("peer_call");
            let mut headers = HeaderMap::new();
            inject_context(&caller, &mut headers);
            let sent = span_context(&caller);
            let traceparent = headers["traceparent"].to_str().unwrap().to_owned();
            assert_eq!(
                traceparent,
                format!("00-{}-{}-01", sent.trace_id(), sent.span_id()),
                "version 00, trace id, parent id, sampled"
            );

            let callee = tracing::info_span!("federation_api");
            set_remote_parent(&callee, &headers);
            let received = span_context(&callee);
            assert_eq!(received.trace_id(), sent.trace_id(), "one trace");
            assert_ne!(received.span_id(), sent.span_id(), "a span of its own");
            assert!(
                received.is_sampled(),
                "the caller's sampling decision holds"
            );
        });
    }

    #[test]
    fn a_malformed_or_missing_traceparent_changes_no_parent() {
        tracing::subscriber::with_default(local_subscriber(), || {
            let caller = tracing::info_span!("peer_call");
            let caller_trace = span_context(&caller).trace_id();
            for bad in [
                "",
                "garbage",
                // all-zero trace id, then all-zero parent id: invalid (W3C Trace Context §3.2)
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            ] {
                let mut headers = HeaderMap::new();
                if !bad.is_empty() {
                    headers.insert("traceparent", HeaderValue::from_static(bad));
                }
                let child = tracing::info_span!(parent: &caller, "federation_api");
                set_remote_parent(&child, &headers);
                assert_eq!(
                    span_context(&child).trace_id(),
                    caller_trace,
                    "{bad:?}: the local parent is kept"
                );
                let root = tracing::info_span!(parent: None, "federation_api");
                set_remote_parent(&root, &headers);
                let root = span_context(&root);
                assert!(root.is_valid(), "{bad:?}: the span still traces");
                assert_ne!(root.trace_id(), caller_trace, "{bad:?}: a new trace");
            }
        });
    }

    #[test]
    fn a_span_the_filter_disables_injects_nothing() {
        tracing::subscriber::with_default(local_subscriber(), || {
            let quiet = tracing::debug_span!("below_the_level");
            let mut headers = HeaderMap::new();
            inject_context(&quiet, &mut headers);
            assert!(headers.is_empty(), "{headers:?}");
            assert_eq!(trace_fields(&quiet), vec![]);
        });
    }

    /// The node-to-node carrier: the same W3C fields as name-value pairs; the callee's span
    /// continues the caller's trace, and fields that name no valid parent change nothing.
    #[test]
    fn trace_fields_continue_the_callers_trace_across_nodes() {
        tracing::subscriber::with_default(local_subscriber(), || {
            let caller = tracing::info_span!("forward_call");
            let fields = trace_fields(&caller);
            let sent = span_context(&caller);
            assert_eq!(
                fields,
                vec![(
                    "traceparent".to_owned(),
                    format!("00-{}-{}-01", sent.trace_id(), sent.span_id())
                )],
                "no tracestate when the caller has none"
            );
            let callee = tracing::info_span!(parent: None, "forwarded_proposal");
            set_remote_parent_from_fields(&callee, &fields);
            let received = span_context(&callee);
            assert_eq!(received.trace_id(), sent.trace_id(), "one trace");
            assert_ne!(received.span_id(), sent.span_id());

            let upper: Vec<_> = fields
                .iter()
                .map(|(name, value)| (name.to_ascii_uppercase(), value.clone()))
                .collect();
            let callee = tracing::info_span!(parent: None, "forwarded_proposal");
            set_remote_parent_from_fields(&callee, &upper);
            assert_eq!(span_context(&callee).trace_id(), sent.trace_id());

            for bad in [
                vec![],
                vec![("traceparent".to_owned(), "garbage".to_owned())],
                vec![("tracestate".to_owned(), "k=v".to_owned())],
                vec![(
                    "traceparent".to_owned(),
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
                )],
            ] {
                let root = tracing::info_span!(parent: None, "forwarded_proposal");
                set_remote_parent_from_fields(&root, &bad);
                let root = span_context(&root);
                assert!(root.is_valid(), "{bad:?}");
                assert_ne!(root.trace_id(), sent.trace_id(), "{bad:?}: a new trace");
            }
        });
    }
}
