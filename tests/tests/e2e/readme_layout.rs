//! The README's Layout table stays true: every workspace crate has a row, and each row's line
//! count is within 15 % (or 0.3k) of the crate's `.rs` lines today (tests included, a nested
//! crate's lines its own). A crate that grows or shrinks past that updates its row.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Lines of the `.rs` files under `dir`, leaving out nested crates (a directory with its own
/// `Cargo.toml`) and build output.
fn rust_lines(dir: &Path) -> usize {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("a crate directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name != "target" && !path.join("Cargo.toml").exists() {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                total += text.lines().count();
            }
        }
    }
    total
}

/// `(path, figure in thousands of lines)` of each row of the README's Layout table.
fn layout_rows(readme: &str) -> Vec<(String, f64)> {
    let start = readme.find("## Layout").expect("a Layout section");
    readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| crate |"))
        .skip(2)
        .take_while(|l| l.starts_with("| `"))
        .map(|l| {
            let path = l
                .split('`')
                .nth(1)
                .expect("a path in backticks")
                .trim_end_matches('/')
                .to_string();
            let figure = l
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .and_then(|c| c.trim().strip_suffix('k'))
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("a line count like `6.2k` ends the row: {l}"));
            (path, figure)
        })
        .collect()
}

/// The workspace members from the root `Cargo.toml`.
fn members(manifest: &str) -> Vec<String> {
    let start = manifest.find("members = [").expect("workspace members");
    manifest[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with(']'))
        .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_crate_has_a_row_whose_line_count_is_about_right() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let rows = layout_rows(&readme);
    let listed: Vec<&str> = rows.iter().map(|(p, _)| p.as_str()).collect();
    let missing: Vec<String> = members(&manifest)
        .into_iter()
        .filter(|m| !listed.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "crates without a Layout row: {missing:?}"
    );
    let mut wrong = Vec::new();
    for (path, figure) in &rows {
        let dir = root.join(path);
        assert!(dir.join("Cargo.toml").exists(), "{path} is not a crate");
        let actual = rust_lines(&dir) as f64 / 1000.0;
        if (actual - figure).abs() > (0.15 * actual).max(0.3) {
            wrong.push(format!("{path}: README {figure:.1}k, now {actual:.1}k"));
        }
    }
    assert!(wrong.is_empty(), "Layout rows to update: {wrong:#?}");
}
