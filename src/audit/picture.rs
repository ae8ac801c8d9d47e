//! Pictures of a custody graph for people: Graphviz DOT (for `dot -Tsvg` and other tools) and a
//! self-contained SVG flow diagram drawn here (no layout engine needed: holdings are placed in
//! columns by their distance from the lot's sources). Edge width shows the quantity shipped; what
//! went missing is drawn in red over it, and a holding's losses are red.

use super::thousands;
use super::trace::Graph;
use std::collections::VecDeque;
use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn dot_esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn node_label(g: &Graph, i: usize) -> Vec<String> {
    let n = &g.nodes[i];
    let mut lines = vec![
        if n.name.is_empty() {
            n.enterprise.clone()
        } else {
            n.name.clone()
        },
        format!("{} · site {}", n.enterprise, n.site),
        if n.lots.is_empty() {
            "nothing received".to_string()
        } else {
            format!("lots {}", n.lots.join(", "))
        },
    ];
    for (term, q) in &n.figures {
        if !matches!(*term, "shipped" | "received") {
            lines.push(format!("{term} {}", thousands(*q)));
        }
    }
    lines.push(format!("on hand {}", thousands(n.on_hand as u128)));
    lines
}

/// Graphviz DOT: one box per holding, one arrow per shipment (pen width by quantity, red and
/// dashed where quantity went missing).
pub fn dot(g: &Graph) -> String {
    let max = g.edges.iter().map(|e| e.shipped).max().unwrap_or(1).max(1);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "digraph \"lot {}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"sans-serif\"];",
        dot_esc(&g.lot)
    );
    for i in 0..g.nodes.len() {
        let lost = g.nodes[i].figures.get("lost").copied().unwrap_or(0) > 0;
        let _ = writeln!(
            out,
            "  n{i} [label=\"{}\"{}];",
            dot_esc(&node_label(g, i).join("\\n")),
            if lost { ", color=red" } else { "" }
        );
    }
    for e in &g.edges {
        let width = 1.0 + 7.0 * e.shipped as f64 / max as f64;
        let received = e
            .received
            .map_or("not received".to_string(), |r| format!("received {r}"));
        let missing = if e.missing > 0 {
            format!("\\nMISSING {}", e.missing)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  n{} -> n{} [label=\"entry {}: shipped {}\\n{received}{missing}\", penwidth={width:.1}{}];",
            e.from,
            e.to,
            e.ship_entry,
            e.shipped,
            if e.missing > 0 {
                ", color=red, fontcolor=red, style=dashed"
            } else {
                ""
            }
        );
    }
    out.push_str("}\n");
    out
}

/// Column of each node: its distance from the graph's sources (nodes nothing was shipped to).
fn columns(g: &Graph) -> Vec<usize> {
    let n = g.nodes.len();
    let mut indeg = vec![0usize; n];
    for e in &g.edges {
        indeg[e.to] += 1;
    }
    let mut col = vec![usize::MAX; n];
    let mut q: VecDeque<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    if q.is_empty() && n > 0 {
        q.push_back(0);
    }
    for &i in &q {
        col[i] = 0;
    }
    while let Some(i) = q.pop_front() {
        for e in g.edges.iter().filter(|e| e.from == i) {
            if col[e.to] == usize::MAX {
                col[e.to] = col[i] + 1;
                q.push_back(e.to);
            }
        }
    }
    // Nodes on a cycle not reached from a source: after everything else.
    let last = col
        .iter()
        .filter(|&&c| c != usize::MAX)
        .max()
        .copied()
        .unwrap_or(0);
    col.iter()
        .map(|&c| if c == usize::MAX { last + 1 } else { c })
        .collect()
}

/// A self-contained SVG flow diagram of the custody graph.
pub fn svg(g: &Graph) -> String {
    const W: f64 = 250.0;
    const GAP_X: f64 = 320.0;
    const LINE: f64 = 15.0;
    const GAP_Y: f64 = 30.0;
    let col = columns(g);
    let labels: Vec<Vec<String>> = (0..g.nodes.len()).map(|i| node_label(g, i)).collect();
    let height = |i: usize| 12.0 + LINE * labels[i].len() as f64;
    let mut y_next: Vec<f64> = vec![40.0; col.iter().max().map_or(1, |m| m + 1)];
    let mut pos = vec![(0.0, 0.0); g.nodes.len()];
    for i in 0..g.nodes.len() {
        let c = col[i];
        pos[i] = (20.0 + c as f64 * (W + GAP_X), y_next[c]);
        y_next[c] += height(i) + GAP_Y;
    }
    let width = 40.0 + y_next.len() as f64 * (W + GAP_X) - GAP_X;
    let total_h = y_next.iter().cloned().fold(100.0, f64::max) + 20.0;
    let max = g.edges.iter().map(|e| e.shipped).max().unwrap_or(1).max(1) as f64;
    let mut s = String::new();
    let mut edge_labels = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{total_h:.0}" viewBox="0 0 {width:.0} {total_h:.0}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(
        s,
        r##"<title>Custody of lot {} ({})</title><rect width="100%" height="100%" fill="#ffffff"/>"##,
        esc(&g.lot),
        esc(&g.substance)
    );
    let _ = writeln!(
        s,
        r##"<text x="20" y="22" font-size="15" font-weight="bold">Lot {} · {} · {} holdings, {} shipments</text>"##,
        esc(&g.lot),
        esc(&g.substance),
        g.nodes.len(),
        g.edges.len()
    );
    for e in &g.edges {
        let (fx, fy) = pos[e.from];
        let (tx, ty) = pos[e.to];
        let (x1, y1) = (fx + W, fy + height(e.from) / 2.0);
        let (x2, y2) = (tx, ty + height(e.to) / 2.0);
        let mid = (x1 + x2) / 2.0;
        let path = format!("M{x1:.1},{y1:.1} C{mid:.1},{y1:.1} {mid:.1},{y2:.1} {x2:.1},{y2:.1}");
        let w = 1.5 + 16.0 * e.shipped as f64 / max;
        let _ = writeln!(
            s,
            r##"<path class="edge" d="{path}" fill="none" stroke="#7a8ca5" stroke-opacity="0.75" stroke-width="{w:.1}"/>"##
        );
        if e.missing > 0 {
            let mw = (1.5 + 16.0 * e.missing as f64 / max).min(w);
            let _ = writeln!(
                s,
                r##"<path class="missing" d="{path}" fill="none" stroke="#d7191c" stroke-width="{mw:.1}" stroke-dasharray="6 4"/>"##
            );
        }
        let label = match e.received {
            Some(r) => format!(
                "#{} shipped {} · received {}",
                e.ship_entry,
                thousands(e.shipped as u128),
                thousands(r as u128)
            ),
            None => format!(
                "#{} shipped {} · not received",
                e.ship_entry,
                thousands(e.shipped as u128)
            ),
        };
        // Labels sit by the receiving end, where no other edge ends at the same height.
        let (lx, ly) = (x2 - 8.0, y2 - 10.0);
        let _ = write!(
            edge_labels,
            r##"<text x="{lx:.1}" y="{ly:.1}" text-anchor="end" paint-order="stroke" stroke="#ffffff" stroke-width="4">{}</text>"##,
            esc(&label)
        );
        edge_labels.push('\n');
        if e.missing > 0 {
            let _ = writeln!(
                edge_labels,
                r##"<text x="{lx:.1}" y="{:.1}" text-anchor="end" fill="#d7191c" font-weight="bold" paint-order="stroke" stroke="#ffffff" stroke-width="4">missing {}{}</text>"##,
                ly + 28.0,
                thousands(e.missing as u128),
                if e.seals_changed {
                    " · seals changed"
                } else {
                    ""
                }
            );
        }
    }
    for (i, lines) in labels.iter().enumerate() {
        let (x, y) = pos[i];
        let lost = g.nodes[i].figures.get("lost").copied().unwrap_or(0) > 0;
        let _ = writeln!(
            s,
            r##"<rect class="node" x="{x:.1}" y="{y:.1}" width="{W}" height="{:.1}" rx="6" fill="#f4f6fa" stroke="{}" stroke-width="{}"/>"##,
            height(i),
            if lost { "#d7191c" } else { "#34495e" },
            if lost { 2.5 } else { 1.2 }
        );
        for (j, line) in lines.iter().enumerate() {
            let red = line.starts_with("lost ");
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}"{}{}>{}</text>"##,
                x + 8.0,
                y + 16.0 + LINE * j as f64,
                if j == 0 { r#" font-weight="bold""# } else { "" },
                if red { r##" fill="#d7191c""## } else { "" },
                esc(line)
            );
        }
    }
    s.push_str(&edge_labels);
    s.push_str("</svg>\n");
    s
}
