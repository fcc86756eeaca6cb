//! The recipes shipped in recipes/ and examples/ are valid starting points.

mod common;

use common::*;

#[test]
fn shipped_recipes_pass_the_checker() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for dir in ["recipes", "examples/hello"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let r = kiln::recipe::Recipe::load(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(!r.artifacts.is_empty());
                run_ok(kiln().args(["recipe", "check"]).arg(&p));
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 5, "four recipes and the hello example");
}
