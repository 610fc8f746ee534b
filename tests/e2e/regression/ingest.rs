//! HTTP ingest, codecs, drop policy, config ranges (issue 12: 5, 7, 21, 25).
