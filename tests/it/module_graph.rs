#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! The module map of ARCHITECTURE.md, checked against the source: which top-level module
//! imports which (`crate::<module>` in code, comments left out), no cycle among them, and the
//! agent free of server-side modules. Run with `--nocapture` to print the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Code without `//` comments (doc links to other modules are not imports).
fn code_of(text: &str) -> String {
    text.lines().map(|l| l.find("//").map_or(l, |i| &l[..i])).collect::<Vec<_>>().join("\n")
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeSet::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if name != "lib" && name != "main" && (p.is_dir() || p.extension().is_some_and(|x| x == "rs")) {
            modules.insert(name);
        }
    }
    let mut g = Graph::new();
    for m in &modules {
        let mut files = Vec::new();
        let dir = src.join(m);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let file = src.join(format!("{m}.rs"));
        if file.is_file() {
            files.push(file);
        }
        let deps = g.entry(m.clone()).or_default();
        for f in files {
            let code = code_of(&std::fs::read_to_string(&f).unwrap());
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if name != *m && modules.contains(&name) {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

/// Strongly connected components with more than one module (Tarjan's algorithm).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in &t.g[v] {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn render(g: &Graph) -> String {
    g.iter().map(|(m, d)| format!("{m:>10} -> {}", d.iter().cloned().collect::<Vec<_>>().join(", "))).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_checker_finds_a_cycle_when_there_is_one() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("d".into()).or_default().insert("a".into());
    assert_eq!(cycles(&g), vec![vec!["a".to_owned(), "b".into(), "c".into()]]);
    g.get_mut("c").unwrap().clear();
    assert!(cycles(&g).is_empty());
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let g = graph();
    println!("{}", render(&g));
    assert!(g.len() > 10, "the graph reader found too few modules: {g:?}");
    assert!(g["server"].contains("api"), "the reader misses imports: {}", render(&g));
    let c = cycles(&g);
    assert!(c.is_empty(), "import cycles between top-level modules: {c:?}\n{}", render(&g));
}

#[test]
fn the_agent_and_the_wire_import_nothing_server_side() {
    let g = graph();
    let server_side = ["api", "server", "ca", "datastore", "upstream", "keymanager", "cli", "tiers"];
    let bad: Vec<_> = g["agent"].iter().filter(|d| server_side.contains(&d.as_str())).collect();
    assert!(bad.is_empty(), "the agent imports server-side modules {bad:?}");
    let wire: Vec<_> = g["wire"].iter().filter(|d| *d != "spiffe").collect();
    assert!(wire.is_empty(), "wire may import only spiffe, imports {wire:?}");
    assert!(g["spiffe"].is_empty(), "spiffe is pure, imports {:?}", g["spiffe"]);
}
