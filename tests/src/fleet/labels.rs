//! The label `site=factory` in a node's config, given and taken away (the node stopped): the
//! fleet tests' selector `--to site=factory`.

use crate::TestDevnet;

/// The two lines [`with_label`] may write.
const LABEL_LINES: [&str; 2] = ["site = \"factory\"", "labels = { site = \"factory\" }"];

/// Gives node `i` the label `site=factory` in its config (the node must be stopped).
pub fn label(net: &TestDevnet, i: usize) {
    let path = net.dir.join(format!("node{i}")).join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::write(&path, with_label(&text)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Takes the label `site=factory` that [`label`] gave node `i` out of its config again (the
/// node must be stopped), so that a selector `site=factory` no longer admits it.
pub fn unlabel(net: &TestDevnet, i: usize) {
    let path = net.dir.join(format!("node{i}")).join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let Some(text) = without_label(&text) else {
        panic!("node{i} has no label site=factory in {}", path.display());
    };
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// `config` (a node's `config.toml`) with the label `site=factory` under `[provider]`.
fn with_label(config: &str) -> String {
    if config.contains("[provider.labels]") {
        config.replace("[provider.labels]", "[provider.labels]\nsite = \"factory\"")
    } else if config.contains("[provider]") {
        config.replace("[provider]", "[provider]\nlabels = { site = \"factory\" }")
    } else {
        format!("{config}\n[provider]\nlabels = {{ site = \"factory\" }}\n")
    }
}

/// `config` without the line [`with_label`] wrote (an emptied table stays: valid TOML), or
/// `None` when it has none.
fn without_label(config: &str) -> Option<String> {
    let kept: Vec<&str> = config
        .lines()
        .filter(|line| !LABEL_LINES.contains(&line.trim()))
        .collect();
    (kept.len() != config.lines().count()).then(|| kept.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::{with_label, without_label};

    #[test]
    fn unlabel_takes_out_what_label_put_in_whatever_the_provider_section_looks_like() {
        let shapes = [
            "[network]\nlisten = []\n\n[provider.labels]\nrack = \"r1\"\n",
            "[network]\nlisten = []\n\n[provider]\nregion = \"eu\"\n",
            "[network]\nlisten = []\n",
        ];
        for config in shapes {
            let labelled = with_label(config);
            assert!(labelled.contains("factory"), "{labelled}");
            let back = without_label(&labelled).unwrap_or_else(|| panic!("{labelled}"));
            assert!(!back.contains("factory"), "{back}");
            // Every other line is kept, in order.
            let others: Vec<&str> = config.lines().filter(|l| !l.is_empty()).collect();
            let kept: Vec<&str> = back.lines().filter(|l| !l.is_empty()).collect();
            assert_eq!(&kept[..others.len()], &others[..], "{back}");
        }
        assert_eq!(without_label("[provider]\nregion = \"eu\"\n"), None);
    }
}
