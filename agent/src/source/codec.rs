//! Payload codecs: how a source interprets the bytes of each record.
//!
//! Decoding happens in the source, before transforms, so a malformed record is caught where
//! it entered and dead-lettered with the reason instead of failing later stages.

use crate::config::Codec;
use crate::record::Record;

/// Checks one record against the codec; `Err` is the reason it does not fit.
pub fn check(codec: Codec, record: &Record) -> Result<(), String> {
    match codec {
        Codec::Raw | Codec::Binary => Ok(()),
        Codec::Json => serde_json::from_slice::<serde::de::IgnoredAny>(&record.payload)
            .map(|_| ())
            .map_err(|e| format!("invalid JSON: {e}")),
    }
}

/// Splits records into the ones the codec accepts and the rejected ones with reasons.
pub fn decode_all(codec: Codec, records: Vec<Record>) -> (Vec<Record>, Vec<(Record, String)>) {
    if matches!(codec, Codec::Raw | Codec::Binary) {
        return (records, Vec::new());
    }
    let mut ok = Vec::with_capacity(records.len());
    let mut bad = Vec::new();
    for r in records {
        match check(codec, &r) {
            Ok(()) => ok.push(r),
            Err(reason) => bad.push((r, reason)),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_codec_rejects_with_reason_and_keeps_the_record() {
        let good = Record::new("s", "t", br#"{"a":1}"#.to_vec());
        let bad = Record::new("s", "t", b"{not json".to_vec());
        let (ok, rejected) = decode_all(Codec::Json, vec![good.clone(), bad.clone()]);
        assert_eq!(ok, vec![good]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, bad);
        assert!(
            rejected[0].1.starts_with("invalid JSON"),
            "{}",
            rejected[0].1
        );
        let (ok, rejected) = decode_all(Codec::Binary, vec![bad.clone()]);
        assert_eq!((ok.len(), rejected.len()), (1, 0));
    }
}
