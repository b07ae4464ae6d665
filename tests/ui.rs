//! Compile-fail cases of `#[stage]` and `pipeline!` (one mistake per file, named after it,
//! with its exact message in the `.stderr` beside it) and tricky valid input in `ui/pass/`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
