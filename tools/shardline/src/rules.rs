//! `shardline rules`: check a rule set with the function's own loader, publish it to the
//! config table (live, or in shadow beside the live one), show what is published.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use shardline_aws::dynamo::DynamoRuleSource;
use shardline_core::fraud::rules::{RuleSet, SCORER_VARS};
use shardline_core::window::rules::{WINDOW_VARS, WindowRuleSet};

use crate::common::{TemplateArgs, check_endpoint, table_name};

/// Where rule sets are published.
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigTableArgs {
    /// The config table (a deployed stack's is its `ConfigTableName` output). Default: the
    /// template's ConfigTable in the local emulators.
    #[arg(long, env = "CONFIG_TABLE")]
    pub table: Option<String>,
    /// The template, for the local default table name.
    #[command(flatten)]
    pub template: TemplateArgs,
}

impl ConfigTableArgs {
    fn resolve(&self) -> anyhow::Result<String> {
        match &self.table {
            Some(t) if !t.is_empty() => Ok(t.clone()),
            _ => {
                check_endpoint().context(
                    "no --table or CONFIG_TABLE given, so the local emulators' table is used",
                )?;
                table_name(&self.template.load()?, "ConfigTable")
            }
        }
    }

    async fn source(&self) -> anyhow::Result<DynamoRuleSource> {
        let name = self.resolve()?;
        let sdk = shardline_aws::sdk::load_sdk_config().await;
        Ok(DynamoRuleSource::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            name,
        ))
    }
}

/// `shardline rules` subcommands.
#[derive(Subcommand)]
pub enum Rules {
    /// Check a rule set file exactly as the function loads it; print a summary, or every
    /// error with the rule, the line and column, and a caret under it.
    Validate {
        /// The rule set (JSON, v1 or v2).
        file: PathBuf,
        /// Also print the set in the v2 format (v1 rules translated to conditions).
        #[arg(long)]
        v2: bool,
        /// The file is a window rule set (rules/window-default.json's format).
        #[arg(long)]
        window: bool,
    },
    /// Publish a rule set: the scorer picks it up within its rules TTL
    /// (RULES_TTL_SECONDS, 60 s), without a redeploy. An invalid file is refused and nothing is
    /// written; the rule set in force stays.
    Publish {
        /// The rule set.
        file: PathBuf,
        /// Run it in shadow beside the live set: its decisions are stored apart
        /// (`shadow:` ids) and never acted on, and the function counts disagreements.
        #[arg(long)]
        shadow: bool,
        /// The config table.
        #[command(flatten)]
        table: ConfigTableArgs,
    },
    /// Show the published live (or shadow) rule set: version, hash, thresholds, lists and
    /// rules; the shipped default when nothing is published.
    Show {
        /// The shadow rule set instead.
        #[arg(long)]
        shadow: bool,
        /// Print the stored JSON.
        #[arg(long)]
        json: bool,
        /// The config table.
        #[command(flatten)]
        table: ConfigTableArgs,
    },
    /// Stop the shadow rule set.
    DropShadow {
        /// The config table.
        #[command(flatten)]
        table: ConfigTableArgs,
    },
    /// The variables, operators and functions a condition may use.
    Reference,
}

/// Loads a file with the function's loader; the error shows every detail.
pub fn load_file(path: &Path) -> anyhow::Result<RuleSet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    RuleSet::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.explain()))
}

/// A readable summary of a rule set.
pub fn summary(rs: &RuleSet) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let th = |t: Option<u32>| t.map_or_else(|| "-".to_owned(), |t| t.to_string());
    let _ = writeln!(
        s,
        "rule set {} ({}): {} rules, review at {}, block at {}",
        rs.version,
        rs.hash,
        rs.rules.len(),
        th(rs.thresholds.review),
        th(rs.thresholds.block)
    );
    for l in &rs.lists {
        let _ = writeln!(
            s,
            "  list @{} ({}), {} value(s) in the file",
            l.name,
            l.kind,
            l.values.len()
        );
    }
    for r in &rs.rules {
        let what = match (r.action, r.score) {
            (Some(a), 0) => a.to_string(),
            (Some(a), n) => format!("{a} +{n}"),
            (None, n) => format!("+{n}"),
        };
        let _ = writeln!(
            s,
            "  {:<24} {:<12} {:<20} {}{}",
            r.id,
            what,
            r.reason,
            r.when,
            if r.shadow { "  [shadow]" } else { "" }
        );
    }
    s
}

/// The language reference as text.
pub fn reference() -> String {
    use std::fmt::Write;
    let mut s = String::from("Variables of card rules (rules/fraud-default.json):\n");
    for d in SCORER_VARS {
        let _ = write!(s, "  {:<20} {:<8} {}", d.name, d.ty.name(), d.doc);
        if !d.values.is_empty() {
            let _ = write!(s, " ({})", d.values.join(", "));
        }
        s.push('\n');
    }
    s.push_str("Variables of window rules (rules/window-default.json):\n");
    for d in WINDOW_VARS {
        let _ = writeln!(s, "  {:<20} {:<8} {}", d.name, d.ty.name(), d.doc);
    }
    s.push_str(
        "Operators (loosest first): or; and; not; == != < <= > >= in, not in; + -; * / %; unary -\n\
         Sets and lists: x in [\"GB\", \"IE\"], mcc not in [7995, 4829], card in @blocked_cards\n\
         Functions: abs(n), min(a, b), max(a, b), num(bool), regex_match(s, \"re\"), starts_with(s, \"p\")\n\
         Outcomes: an allow rule that fires ends evaluation; then block; then review or the score thresholds.\n",
    );
    s
}

/// `shardline rules ...`.
pub async fn run(cmd: Rules) -> anyhow::Result<()> {
    match cmd {
        Rules::Validate {
            file,
            v2,
            window: true,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let rs = WindowRuleSet::from_json(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.explain()))?;
            println!(
                "window rule set {} ({}): {} rules",
                rs.version,
                rs.hash,
                rs.rules.len()
            );
            for r in &rs.rules {
                println!(
                    "  {:<24} {:?} {:>4}m {:<8} {:<24} {}",
                    r.id,
                    r.kind,
                    r.width_min,
                    r.action.to_string(),
                    r.reason,
                    r.when
                );
            }
            if v2 {
                println!("{}", rs.to_v2_json());
            }
            println!("{}: valid", file.display());
        }
        Rules::Validate {
            file,
            v2,
            window: false,
        } => {
            let rs = load_file(&file)?;
            print!("{}", summary(&rs));
            if v2 {
                println!("{}", rs.to_v2_json());
            }
            println!("{}: valid", file.display());
        }
        Rules::Publish {
            file,
            shadow,
            table,
        } => {
            let rs = load_file(&file)?;
            let src = table.source().await?;
            src.store(&rs, shadow).await?;
            print!("{}", summary(&rs));
            println!(
                "published {} as the {} rule set; the scorer uses it within its rules TTL",
                rs.version,
                if shadow { "shadow" } else { "live" }
            );
        }
        Rules::Show {
            shadow,
            json,
            table,
        } => {
            let src = table.source().await?;
            match src.stored_json(shadow).await? {
                None if shadow => println!("no shadow rule set is published"),
                None => {
                    println!("nothing published: the shipped default is in force");
                    print!("{}", summary(&RuleSet::default_rules()));
                }
                Some(body) => {
                    if json {
                        println!("{body}");
                        return Ok(());
                    }
                    match RuleSet::from_json(&body) {
                        Ok(rs) => print!("{}", summary(&rs)),
                        Err(e) => bail!(
                            "the stored rule set does not load (the functions keep the one they had): {}",
                            e.explain()
                        ),
                    }
                }
            }
        }
        Rules::DropShadow { table } => {
            if table.source().await?.clear_shadow().await? {
                println!("shadow rule set removed");
            } else {
                println!("no shadow rule set was published");
            }
        }
        Rules::Reference => print!("{}", reference()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rules_validate_and_a_broken_file_says_where() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let rs = load_file(&root.join("rules/fraud-default.json")).unwrap();
        let s = summary(&rs);
        assert!(s.contains("review at 600, block at 900"), "{s}");
        assert!(s.contains("blocklisted_card"), "{s}");
        let dir = std::env::temp_dir().join(format!("shardline-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.json");
        std::fs::write(
            &bad,
            r#"{"version":"x","rules":[{"id":"r1","when":"count_1m >= 'six'","score":1,"reason":"R"}]}"#,
        )
        .unwrap();
        let e = load_file(&bad).unwrap_err().to_string();
        assert!(
            e.contains("rule \"r1\", condition 1:10: >= compares numbers"),
            "{e}"
        );
        assert!(e.contains("count_1m >= 'six'\n             ^"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The rule set README.md shows is one the loader accepts.
    #[test]
    fn the_readme_example_is_a_valid_rule_set() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let section = readme
            .split("## Rules, decisions and lists")
            .nth(1)
            .expect("README has the rules section");
        let json = section
            .split("```json\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("the section shows a rule set");
        let rs = RuleSet::from_json(json).unwrap_or_else(|e| panic!("{}", e.explain()));
        assert_eq!(rs.rules.len(), 5);
    }

    #[test]
    fn reference_lists_every_variable() {
        let r = reference();
        for d in SCORER_VARS {
            assert!(r.contains(d.name), "{}", d.name);
        }
    }
}
