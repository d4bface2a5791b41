//! What a deployer's `node.log` says about its releases (`agora_fleet`'s line `fleet target
//! released: its contract ends … reason=…`), for a bench to report why a target went.

use crate::TestDevnet;

/// The reasons node 0's log gives for releasing the node `target` (a node id) from the
/// deployment `deployment` (an id), oldest first.
pub fn release_reasons(net: &TestDevnet, deployment: &str, target: &str) -> Vec<String> {
    let log = std::fs::read_to_string(net.dir.join("node0").join("node.log")).unwrap_or_default();
    release_reasons_in(&log, deployment, target)
}

/// [`release_reasons`] of the log text `log`. The node writes ids short (their first 8
/// characters, `short()`), and may colour its fields.
fn release_reasons_in(log: &str, deployment: &str, target: &str) -> Vec<String> {
    let short = |id: &str| id.chars().take(8).collect::<String>();
    let deployment = format!("deployment={}", short(deployment));
    let target = format!("target={}", short(target));
    strip_ansi(log)
        .lines()
        .filter(|l| {
            l.contains("fleet target released") && l.contains(&deployment) && l.contains(&target)
        })
        .filter_map(|l| {
            let reason = l.split("reason=").nth(1)?.split_whitespace().next()?;
            Some(reason.to_string())
        })
        .collect()
}

/// `text` without ANSI escape sequences (ESC, `[`, parameters, a final letter).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::release_reasons_in;

    #[test]
    fn release_reasons_are_read_from_plain_and_coloured_lines_of_that_target_only() {
        let deployment = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
        let (target, other) = ("5HqFwXyZabcdefgh", "6JrGxYzAbcdefghi");
        let field = |k: &str, v: &str| format!("\x1b[3m{k}\x1b[0m\x1b[2m=\x1b[0m{v}");
        let log = [
            format!(
                "INFO agora_fleet::effects: fleet target released: its contract ends \
                 deployment=0a1b2c3d target={} image=bafy contract=99aa reason=Offline",
                &target[..8]
            ),
            format!(
                "INFO agora_fleet::effects: fleet target released: its contract ends {} {} {}",
                field("deployment", "0a1b2c3d"),
                field("target", &target[..8]),
                field("reason", "Deleted")
            ),
            format!(
                "INFO agora_fleet::effects: fleet target released: its contract ends \
                 deployment=0a1b2c3d target={} reason=Surplus",
                &other[..8]
            ),
            format!(
                "INFO agora_fleet::effects: fleet target released: its contract ends \
                 deployment=ffffffff target={} reason=Failed",
                &target[..8]
            ),
        ]
        .join("\n");
        assert_eq!(
            release_reasons_in(&log, deployment, target),
            vec!["Offline".to_string(), "Deleted".to_string()]
        );
    }
}
