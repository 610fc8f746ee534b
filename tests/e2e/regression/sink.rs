//! Sink: hostile frames and records, journal gaps and corruption, limits (issue 12: 1, 2, 12, 15, 16, 17).
