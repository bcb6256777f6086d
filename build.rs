//! Expands the kernels' repeated blocks. A register-blocked kernel keeps its accumulators in
//! named variables (an array indexed by loop variables may live in memory on drivers that do
//! not unroll), so its source repeats one line per accumulator; the shaders write such a block
//! once, between `//#for NAME in A..B` and `//#end` (nestable), with `${EXPR}` for a sum of
//! products of loop variables and integers and `${xyzw EXPR}` for a vector component. Every
//! `shaders/*.wgsl` is written expanded to `$OUT_DIR/shaders/`, where `gpu::shaders` includes it.

use std::collections::HashMap;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("shaders");
    std::fs::create_dir_all(&out).expect("create $OUT_DIR/shaders");
    let mut entries: Vec<_> = std::fs::read_dir("shaders")
        .expect("read shaders/")
        .map(|e| e.expect("list shaders/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    entries.sort();
    for path in entries {
        let source = std::fs::read_to_string(&path).expect("read a shader");
        let lines: Vec<&str> = source.split('\n').collect();
        let expanded =
            expand(&lines, &HashMap::new()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::write(out.join(path.file_name().unwrap()), expanded.join("\n"))
            .expect("write an expanded shader");
    }
}

/// `(name, start, end)` of a `//#for name in start..end` line.
fn loop_header(line: &str) -> Option<Result<(String, i64, i64), String>> {
    let rest = line.trim().strip_prefix("//#for ")?;
    let parse = || {
        let (name, range) = rest.split_once(" in ")?;
        let (a, b) = range.trim().split_once("..")?;
        Some((name.trim().to_string(), a.parse().ok()?, b.parse().ok()?))
    };
    Some(parse().ok_or_else(|| format!("bad loop header {line:?}")))
}

fn is_end(line: &str) -> bool {
    line.trim() == "//#end"
}

fn expand(lines: &[&str], vars: &HashMap<String, i64>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(header) = loop_header(lines[i]) else {
            if is_end(lines[i]) {
                return Err(format!("//#end without //#for at {:?}", lines[i]));
            }
            out.push(match vars.is_empty() {
                true => lines[i].to_string(),
                false => substitute(lines[i], vars)?,
            });
            i += 1;
            continue;
        };
        let (name, start, end) = header?;
        let mut depth = 1;
        let mut j = i + 1;
        while depth > 0 {
            let line = lines.get(j).ok_or("a //#for without its //#end")?;
            if loop_header(line).is_some() {
                depth += 1;
            } else if is_end(line) {
                depth -= 1;
            }
            j += 1;
        }
        let body = &lines[i + 1..j - 1];
        for value in start..end {
            let mut inner = vars.clone();
            inner.insert(name.clone(), value);
            out.extend(expand(body, &inner)?);
        }
        i = j;
    }
    Ok(out)
}

/// Replaces each `${EXPR}` of `line`.
fn substitute(line: &str, vars: &HashMap<String, i64>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {line:?}"))?;
        out.push_str(&evaluate(&rest[start + 2..start + end], vars)?);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A sum of products of integers and loop variables, or `xyzw EXPR` for a component name.
fn evaluate(expr: &str, vars: &HashMap<String, i64>) -> Result<String, String> {
    if let Some(index) = expr.trim().strip_prefix("xyzw ") {
        let i = evaluate(index, vars)?;
        return ["x", "y", "z", "w"]
            .get(i.parse::<usize>().map_err(|e| e.to_string())?)
            .map(|c| c.to_string())
            .ok_or_else(|| format!("component {i} of {expr:?} is not in 0..4"));
    }
    let mut total = 0;
    for term in expr.split('+') {
        let mut product = 1;
        for factor in term.split('*').map(str::trim) {
            product *= match factor.parse::<i64>() {
                Ok(n) => n,
                Err(_) => *vars
                    .get(factor)
                    .ok_or_else(|| format!("unknown name {factor:?} in ${{{expr}}}"))?,
            };
        }
        total += product;
    }
    Ok(total.to_string())
}
