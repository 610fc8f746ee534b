//! Regression tests for the defects of issue 12 (hostile input and real faults), one file
//! per part of the data path. Each test is named after the bug it pins down and says which
//! numbered defect of the issue it covers.

mod file;
mod forward;
mod ingest;
mod queue;
mod security;
mod sink;
