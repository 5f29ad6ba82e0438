//! Log lines as Go's `log/slog` JSON handler writes them (what Spegel prints): one flat JSON
//! object per line, `{"time":"…","level":"INFO","msg":"…",<fields>…}`. The fields of the spans
//! an event is in come first (outermost span first), then the event's own fields, all at the top
//! level beside `time`, `level` and `msg`.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Where the lines go.
pub trait Sink: Send + Sync + 'static {
    /// Writes one whole line (with its newline).
    fn write_line(&self, line: &str);
}

/// Standard error, one `write` per line so that lines of different threads never interleave.
#[derive(Debug, Default)]
pub struct Stderr;

impl Sink for Stderr {
    fn write_line(&self, line: &str) {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// The layer that writes flat JSON lines.
#[derive(Debug)]
pub struct FlatJson<S> {
    sink: S,
    now: fn() -> SystemTime,
}

impl<S: Sink> FlatJson<S> {
    /// A layer writing to `sink`.
    pub fn new(sink: S) -> FlatJson<S> {
        FlatJson {
            sink,
            now: SystemTime::now,
        }
    }

    #[cfg(test)]
    fn with_clock(mut self, now: fn() -> SystemTime) -> FlatJson<S> {
        self.now = now;
        self
    }
}

/// The fields of a span, already rendered as `,"key":value` pairs.
struct SpanFields(String);

impl<S, T> tracing_subscriber::Layer<T> for FlatJson<S>
where
    S: Sink,
    T: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, T>) {
        let Some(span) = ctx.span(id) else { return };
        let mut v = Fields::default();
        attrs.record(&mut v);
        span.extensions_mut().insert(SpanFields(v.out));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, T>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        let mut v = Fields::default();
        values.record(&mut v);
        match ext.get_mut::<SpanFields>() {
            Some(f) => f.0.push_str(&v.out),
            None => ext.insert(SpanFields(v.out)),
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, T>) {
        let mut v = Fields::default();
        event.record(&mut v);
        let mut line = String::with_capacity(128 + v.out.len());
        line.push_str("{\"time\":");
        push_str(&mut line, &rfc3339_millis((self.now)()));
        line.push_str(",\"level\":");
        push_str(&mut line, level_name(*event.metadata().level()));
        line.push_str(",\"msg\":");
        push_str(&mut line, v.message.as_deref().unwrap_or(""));
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    line.push_str(&f.0);
                }
            }
        }
        line.push_str(&v.out);
        line.push_str("}\n");
        self.sink.write_line(&line);
    }
}

/// slog's level names.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// Collects the message and renders every other field as `,"key":value`.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    out: String,
}

impl Fields {
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        // What the `log` crate bridge adds about the call site; slog prints no such keys.
        if name.starts_with("log.") {
            return false;
        }
        self.out.push(',');
        push_str(&mut self.out, name);
        self.out.push(':');
        true
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = Some(format!("{value:?}"));
        } else if self.key(field) {
            push_str(&mut self.out, &format!("{value:?}"));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else if self.key(field) {
            push_str(&mut self.out, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            if value.is_finite() {
                let _ = write!(self.out, "{value}");
            } else {
                // JSON has no NaN or infinities; slog writes them as errors, we as strings.
                push_str(&mut self.out, &value.to_string());
            }
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.out.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            push_str(&mut self.out, &value.to_string());
        }
    }
}

/// Appends `s` as a JSON string.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-12-02T12:52:31.123Z`: RFC 3339 in UTC with milliseconds, as slog writes `time`.
fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<String>>);

    impl Sink for Lines {
        fn write_line(&self, line: &str) {
            self.0.lock().unwrap().push_str(line);
        }
    }

    fn fixed() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_796_215_951_123)
    }

    fn capture(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry()
            .with(FlatJson::new(lines.clone()).with_clock(fixed))
            .with(tracing_subscriber::filter::LevelFilter::DEBUG);
        tracing::subscriber::with_default(subscriber, f);
        let text = lines.0.lock().unwrap().clone();
        assert!(text.ends_with('\n'));
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn fields_are_at_the_top_level() {
        let v = capture(|| {
            tracing::info!(
                source = "peer",
                status = 200u16,
                offset = -3i64,
                ratio = 0.5,
                for_peer = true,
                path = %"/v2/a/blobs/sha256:00",
                "mirrored"
            );
        });
        assert_eq!(
            v,
            [serde_json::json!({
                "time": "2026-12-02T12:52:31.123Z",
                "level": "INFO",
                "msg": "mirrored",
                "source": "peer",
                "status": 200,
                "offset": -3,
                "ratio": 0.5,
                "for_peer": true,
                "path": "/v2/a/blobs/sha256:00",
            })]
        );
        assert!(v[0].get("fields").is_none());
    }

    #[test]
    fn escaping_and_levels() {
        let v = capture(|| {
            let name = "say \"hi\"\\\n\t\u{1}";
            tracing::warn!(error = name, "a \"quoted\" {}", "message");
            tracing::error!(x = f64::NAN, "nan");
            tracing::debug!(list = ?vec!["a", "b"], "debug");
            tracing::trace!("not at DEBUG");
        });
        assert_eq!(v.len(), 3);
        assert_eq!(v[0]["level"], "WARN");
        assert_eq!(v[0]["msg"], "a \"quoted\" message");
        assert_eq!(v[0]["error"], "say \"hi\"\\\n\t\u{1}");
        assert_eq!(v[1]["level"], "ERROR");
        assert_eq!(v[1]["x"], "NaN");
        assert_eq!(v[2]["level"], "DEBUG");
        assert_eq!(v[2]["list"], "[\"a\", \"b\"]");
    }

    #[test]
    fn span_fields_come_along() {
        let v = capture(|| {
            let outer = tracing::info_span!("request", id = 7u64);
            let _o = outer.enter();
            let inner = tracing::info_span!(
                "fetch",
                peer = "192.0.2.7:5000",
                late = tracing::field::Empty
            );
            inner.record("late", "yes");
            let _i = inner.enter();
            tracing::info!(status = 404, "not served");
        });
        assert_eq!(
            v[0],
            serde_json::json!({
                "time": "2026-12-02T12:52:31.123Z",
                "level": "INFO",
                "msg": "not served",
                "id": 7,
                "peer": "192.0.2.7:5000",
                "late": "yes",
                "status": 404,
            })
        );
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399);
        assert_eq!(rfc3339_millis(leap), "2000-02-29T23:59:59.000Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
