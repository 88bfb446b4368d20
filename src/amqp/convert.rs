//! Lossless conversion between lapin's properties and the Broker port's, so a handed-over
//! message keeps every property and header exactly.

use lapin::BasicProperties;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use mailroute_actors::broker::{HeaderValue, Headers, Properties};

fn short(s: &Option<ShortString>) -> Option<String> {
    s.as_ref().map(|s| s.as_str().to_string())
}

pub fn from_lapin(p: &BasicProperties) -> Properties {
    Properties {
        content_type: short(p.content_type()),
        content_encoding: short(p.content_encoding()),
        headers: p
            .headers()
            .as_ref()
            .map(table_from_lapin)
            .unwrap_or_default(),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        correlation_id: short(p.correlation_id()),
        reply_to: short(p.reply_to()),
        expiration: short(p.expiration()),
        message_id: short(p.message_id()),
        timestamp: *p.timestamp(),
        kind: short(p.kind()),
        user_id: short(p.user_id()),
        app_id: short(p.app_id()),
        cluster_id: short(p.cluster_id()),
    }
}

pub fn to_lapin(p: &Properties) -> BasicProperties {
    let mut out = BasicProperties::default();
    let s = |v: &String| ShortString::from(v.as_str());
    if let Some(v) = &p.content_type {
        out = out.with_content_type(s(v));
    }
    if let Some(v) = &p.content_encoding {
        out = out.with_content_encoding(s(v));
    }
    if !p.headers.is_empty() {
        out = out.with_headers(table_to_lapin(&p.headers));
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = &p.correlation_id {
        out = out.with_correlation_id(s(v));
    }
    if let Some(v) = &p.reply_to {
        out = out.with_reply_to(s(v));
    }
    if let Some(v) = &p.expiration {
        out = out.with_expiration(s(v));
    }
    if let Some(v) = &p.message_id {
        out = out.with_message_id(s(v));
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = &p.kind {
        out = out.with_type(s(v));
    }
    if let Some(v) = &p.user_id {
        out = out.with_user_id(s(v));
    }
    if let Some(v) = &p.app_id {
        out = out.with_app_id(s(v));
    }
    if let Some(v) = &p.cluster_id {
        out = out.with_cluster_id(s(v));
    }
    out
}

fn table_from_lapin(t: &FieldTable) -> Headers {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), value_from_lapin(v)))
        .collect()
}

fn table_to_lapin(h: &Headers) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in h {
        t.insert(ShortString::from(k.as_str()), value_to_lapin(v));
    }
    t
}

fn value_from_lapin(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::I8(*i),
        AMQPValue::ShortShortUInt(i) => HeaderValue::U8(*i),
        AMQPValue::ShortInt(i) => HeaderValue::I16(*i),
        AMQPValue::ShortUInt(i) => HeaderValue::U16(*i),
        AMQPValue::LongInt(i) => HeaderValue::I32(*i),
        AMQPValue::LongUInt(i) => HeaderValue::U32(*i),
        AMQPValue::LongLongInt(i) => HeaderValue::I64(*i),
        AMQPValue::Float(f) => HeaderValue::F32(*f),
        AMQPValue::Double(f) => HeaderValue::F64(*f),
        AMQPValue::DecimalValue(d) => HeaderValue::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => HeaderValue::ShortString(s.as_str().to_string()),
        AMQPValue::LongString(s) => HeaderValue::LongString(s.as_bytes().to_vec()),
        AMQPValue::FieldArray(a) => {
            HeaderValue::Array(a.as_slice().iter().map(value_from_lapin).collect())
        }
        AMQPValue::Timestamp(t) => HeaderValue::Timestamp(*t),
        AMQPValue::FieldTable(t) => HeaderValue::Table(table_from_lapin(t)),
        AMQPValue::ByteArray(b) => HeaderValue::Bytes(b.as_slice().to_vec()),
        AMQPValue::Void => HeaderValue::Void,
    }
}

fn value_to_lapin(v: &HeaderValue) -> AMQPValue {
    match v {
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::I8(i) => AMQPValue::ShortShortInt(*i),
        HeaderValue::U8(i) => AMQPValue::ShortShortUInt(*i),
        HeaderValue::I16(i) => AMQPValue::ShortInt(*i),
        HeaderValue::U16(i) => AMQPValue::ShortUInt(*i),
        HeaderValue::I32(i) => AMQPValue::LongInt(*i),
        HeaderValue::U32(i) => AMQPValue::LongUInt(*i),
        HeaderValue::I64(i) => AMQPValue::LongLongInt(*i),
        HeaderValue::F32(f) => AMQPValue::Float(*f),
        HeaderValue::F64(f) => AMQPValue::Double(*f),
        HeaderValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        HeaderValue::ShortString(s) => AMQPValue::ShortString(s.as_str().into()),
        HeaderValue::LongString(b) => AMQPValue::LongString(LongString::from(b.clone())),
        HeaderValue::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(value_to_lapin).collect::<Vec<_>>(),
        )),
        HeaderValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        HeaderValue::Table(t) => AMQPValue::FieldTable(table_to_lapin(t)),
        HeaderValue::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.clone())),
        HeaderValue::Void => AMQPValue::Void,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip() {
        let mut headers = Headers::new();
        headers.insert("a".into(), HeaderValue::I8(-1));
        headers.insert(
            "b".into(),
            HeaderValue::Decimal {
                scale: 2,
                value: 314,
            },
        );
        headers.insert(
            "c".into(),
            HeaderValue::Array(vec![
                HeaderValue::Bool(true),
                HeaderValue::Bytes(vec![0, 1]),
                HeaderValue::Void,
            ]),
        );
        let mut nested = Headers::new();
        nested.insert("x".into(), HeaderValue::LongString(b"\xff bytes".to_vec()));
        headers.insert("d".into(), HeaderValue::Table(nested));
        headers.insert("e".into(), HeaderValue::F64(1.5));
        let p = Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers,
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("1000".into()),
            message_id: Some("m".into()),
            timestamp: Some(99),
            kind: Some("k".into()),
            user_id: Some("guest".into()),
            app_id: Some("app".into()),
            cluster_id: Some("cl".into()),
        };
        assert_eq!(from_lapin(&to_lapin(&p)), p);
    }
}
