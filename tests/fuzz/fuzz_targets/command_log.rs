//! Fuzz target `command_log`: see `mimid_tests::fuzz_checks::command_log` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mimid_tests::fuzz_checks::command_log(data));
