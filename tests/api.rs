//! Integration tests, built as one binary (faster to compile and link).

mod api {
    mod common;

    mod bad_input;
    mod concurrency;
    mod expiry;
    mod faults;
    mod files;
    mod lifecycle;
    mod model;
    mod persistence;
    mod policy;
    mod sweep;
    mod tamper;
    mod tokens;
    mod writes;
}
