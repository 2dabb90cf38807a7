//! `--log-format json`: one JSON object per line with Elastic Common Schema field names
//! (`@timestamp`, `log.level`, `message`, `ecs.version`, `log.logger`, `event.*`, ...), so
//! Filebeat and Elasticsearch take the lines without a mapping. An event's own fields keep
//! their names (`event.action`, `user.id`); a field holding JSON text (see [`json_field`])
//! is written as the JSON value itself.

use std::{fmt, time::SystemTime};

use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// The ECS version the field names follow.
pub const ECS_VERSION: &str = "8.11.0";

/// Fields whose value is JSON text written as its value (an object, not a string): the
/// before/after states of an audit event.
const JSON_FIELDS: &[&str] = &["veer.change.before", "veer.change.after"];

/// A field that [`Ecs`] writes as the JSON value `v` rather than as text.
pub fn json_field(v: &Value) -> String {
    v.to_string()
}

/// The ECS event formatter.
pub struct Ecs;

struct Fields(Map<String, Value>);

impl Fields {
    fn put(&mut self, field: &Field, v: Value) {
        self.0.insert(field.name().to_string(), v);
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if JSON_FIELDS.contains(&field.name())
            && let Ok(v) = serde_json::from_str(value)
        {
            return self.put(field, v);
        }
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if JSON_FIELDS.contains(&field.name())
            && let Ok(v) = serde_json::from_str(&text)
        {
            return self.put(field, v);
        }
        self.put(field, Value::from(text));
    }
}

impl<S, N> FormatEvent<S, N> for Ecs
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut out = Map::new();
        out.insert(
            "@timestamp".into(),
            humantime::format_rfc3339_millis(SystemTime::now()).to_string().into(),
        );
        out.insert("log.level".into(), meta.level().as_str().to_lowercase().into());
        out.insert("ecs.version".into(), ECS_VERSION.into());
        out.insert("log.logger".into(), meta.target().into());
        out.insert("process.pid".into(), std::process::id().into());
        out.insert("event.dataset".into(), "veer.log".into());
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope.from_root().map(|s| Value::from(s.name())).collect();
            if !spans.is_empty() {
                out.insert("span.names".into(), spans.into());
            }
        }
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        if !fields.0.contains_key("message") {
            fields.0.insert("message".into(), Value::from(""));
        }
        out.extend(fields.0);
        writeln!(w, "{}", Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_has_the_ecs_fields_and_json_fields_stay_json() {
        let buf = Buf::default();
        let writer = buf.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(Ecs)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(
                event.action = "switch",
                user.id = 0u64,
                veer.change.before = %json_field(&serde_json::json!({ "active": "blue" })),
                "changed"
            );
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["log.level"], "warn");
        assert_eq!(v["message"], "changed");
        assert_eq!(v["ecs.version"], ECS_VERSION);
        assert_eq!(v["event.action"], "switch");
        assert_eq!(v["user.id"], 0);
        assert_eq!(v["veer.change.before"]["active"], "blue");
        let ts = v["@timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
    }
}
