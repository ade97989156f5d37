//! The pipeline's `report.html`: one self-contained page (inline SVG and CSS, no scripts, no
//! network) built from the run's files, so it can be regenerated and archived with them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fairnas_model::persist::write_atomically;
use fairnas_supernet::trainer::EpochMetrics;
use serde::de::DeserializeOwned;

use crate::judge::Judgement;
use crate::latency::LatencyTable;
use crate::pipeline::{ExportedModel, NasConfig};
use crate::plot::{escape, Scatter, Series};
use crate::run::{read_front, SavedSearch};
use crate::SearchError;

/// Every line of a JSON-lines file, through the type that wrote it.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, SearchError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| SearchError::Io { path: path.into(), source })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| SearchError::Line {
                path: path.into(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, SearchError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| SearchError::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|source| SearchError::Json { path: path.into(), source })
}

/// One series joined by a line (`name`, CSS `color`).
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    name: &str,
    color: &str,
    points: Vec<(f64, f64)>,
) -> String {
    Scatter {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        series: vec![Series { name: name.into(), color: color.into(), radius: 3.0, line: true, points }],
        markers: Vec::new(),
    }
    .to_svg()
}

/// Writes `out/report.html`; returns its path.
pub fn write(
    out: &Path,
    config: &NasConfig,
    models: &[ExportedModel],
    judgement: Option<&Judgement>,
    timings: &[(String, f64)],
) -> Result<PathBuf, SearchError> {
    let metrics: Vec<EpochMetrics> = read_jsonl(&out.join("supernet/metrics.jsonl"))?;
    let state: SavedSearch = read_json(&out.join("search/search-state.json"))?;
    let front = read_front(&out.join("search/front.json"))?;
    let front_svg_path = out.join("search/front.svg");
    let front_svg = std::fs::read_to_string(&front_svg_path)
        .map_err(|source| SearchError::Io { path: front_svg_path, source })?;
    let latency: LatencyTable = read_json(&out.join("latency.json"))?;
    let choices: Vec<Vec<usize>> =
        front.iter().map(|f| config.space.parse_choices(&f.choices)).collect::<Result<_, _>>()?;

    let mut html = String::new();
    header(&mut html, out, config, models.len(), judgement.is_some());
    if let Some(j) = judgement {
        judged_section(&mut html, j);
    }
    stage_table(&mut html, timings);
    training_section(&mut html, &metrics);
    search_section(&mut html, &front_svg, &state);
    choice_frequencies(&mut html, &choices);
    models_section(&mut html, models, &latency);
    files_section(&mut html);
    let path = out.join("report.html");
    write_atomically(&path, html.as_bytes())
        .map_err(|source| SearchError::Io { path: path.clone(), source })?;
    Ok(path)
}

/// What ran, what the numbers mean, and how to run the same at scale.
fn header(html: &mut String, out: &Path, config: &NasConfig, count: usize, judged: bool) {
    let counts = config.space.choice_counts();
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>FairNAS run: {title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: .5em 0; }} td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: right; }}
th {{ background: #f3f3f3; }} td.l, th.l {{ text-align: left; }} code {{ font-size: .9em; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 1em; }} .charts svg {{ width: 520px; height: auto; }}
.verdict {{ background: #f5f9ff; border-left: 4px solid #1f77b4; padding: .6em 1em; }}
</style></head><body>
<h1>FairNAS run: {title}</h1>
<p><b>What ran.</b> A weight-sharing supernet over the <b>{space}</b> space ({layers} layers, up to {choices} candidate blocks each)
was trained with strictly fair path sampling (every candidate of every layer trained once per step) for {epochs} epochs
(batch {batch}) on the images in <code>{data}</code>, seed {seed}. NSGA-II then searched it on <code>{objectives}</code>
(population {pop}, {gens} generations), {count} models of the found front were exported and the most accurate one fine-tuned
stand-alone for {ft} epochs.</p>
<p><b>What the numbers mean.</b> <i>One-shot top-1</i> is a sub-network's accuracy with the supernet's shared weights
(BN statistics recalibrated on {recal} batches), on {eval} held-out images: a signal for <i>ranking</i> architectures, not the
accuracy an architecture reaches trained on its own, and low after a short run on few images. {judged_text}
<i>Hypervolume</i> is the fraction of the box between the ideal point (100% accuracy, zero cost) and the reference point (the
worst value of each objective) that a front dominates. Multiply-adds are counted at the space's input size; latency is
measured on this machine.</p>
<p><b>At scale.</b> <code>fairnas nas --config FILE</code> takes any subset of <code>nas-config.json</code>'s fields: e.g.
<code>"space": "fairnas"</code> (the paper's 19-layer space at 224x224), <code>"data"</code> a larger image folder laid
out like <code>data/cifar10-nas</code> (<code>train/&lt;class&gt;/</code>, <code>test/&lt;class&gt;/</code>), more <code>supernet.epochs</code>; the stages also run one by one
(<code>fairnas train-supernet</code>, <code>rank</code>, <code>search</code>, <code>export</code>; README).</p>
"#,
        title = escape(&out.display().to_string()),
        space = escape(&config.space.name),
        layers = counts.len(),
        choices = counts.iter().max().copied().unwrap_or(0),
        data = escape(&config.data.display().to_string()),
        seed = config.seed,
        epochs = config.supernet.epochs,
        batch = config.supernet.batch_size,
        recal = config.scoring.bn_recal_batches,
        eval = config.scoring.eval_limit,
        objectives = escape(&config.search.objectives),
        pop = config.search.population,
        gens = config.search.generations,
        count = count,
        ft = config.finetune.epochs,
        judged_text = match judged {
            true => "The verdict below places what the search found by the benchmark's <i>stand-alone</i> accuracies \
                     (every architecture trained on its own on the full CIFAR-10, mean of 3 runs), beside a random search \
                     given the same number of supernet evaluations: that is how good the search was.",
            false => "This space has no benchmark ground truth, so the run is not judged by stand-alone accuracies.",
        },
    );
}

/// The verdict: the exported models and the fronts placed by the benchmark's ground truth.
fn judged_section(html: &mut String, j: &Judgement) {
    let s = &j.search.comparison;
    let _ = write!(
        html,
        "<h2 id=\"judged\">Judged by the benchmark</h2>\n<p class=\"verdict\">Among the {} architectures of the benchmark \
         (best stand-alone top-1 {:.2}%), the front NSGA-II found ({} supernet evaluations) dominates <b>{:.1}%</b> of what the \
         true front dominates (on the true front: {} of its {} members)",
        j.architectures,
        j.best_acc,
        j.search.evaluations,
        100.0 * s.hypervolume_ratio,
        s.front_members_on_true_front,
        j.search.members.len()
    );
    match &j.random {
        Some(r) => {
            let verdict =
                if s.hypervolume_ratio > r.comparison.hypervolume_ratio { "beat" } else { "did not beat" };
            let _ = write!(
                html,
                "; a random search with the same budget ({} evaluations) reaches <b>{:.1}%</b>: the search {verdict} chance.",
                r.evaluations,
                100.0 * r.comparison.hypervolume_ratio
            );
        }
        None => html.push('.'),
    }
    html.push_str(
        " Hypervolumes over (stand-alone top-1, multiply-adds), reference: the benchmark's worst accuracy and largest cost.</p>\n\
         <table><tr><th class=\"l\">exported model</th><th>stand-alone top-1 (%)</th><th>better than (% of all)</th><th>multiply-adds</th></tr>\n",
    );
    for m in &j.models {
        let _ = writeln!(
            html,
            "<tr><td class=\"l\"><code>{}</code></td><td>{:.2}</td><td>{:.1}</td><td>{}</td></tr>",
            escape(&m.choices),
            m.acc,
            m.percentile,
            m.madds
        );
    }
    html.push_str("</table>\n<div class=\"charts\">\n");
    let points =
        |members: &[crate::judge::Placed]| members.iter().map(|p| (p.madds as f64 / 1e6, p.acc)).collect();
    let mut series = vec![
        Series {
            name: "true front".into(),
            color: "#999".into(),
            radius: 2.5,
            line: true,
            points: points(&j.true_front),
        },
        Series {
            name: "NSGA-II front".into(),
            color: "#1f77b4".into(),
            radius: 4.5,
            line: false,
            points: points(&j.search.members),
        },
    ];
    if let Some(r) = &j.random {
        series.push(Series {
            name: "random search front".into(),
            color: "#ff7f0e".into(),
            radius: 3.5,
            line: false,
            points: points(&r.members),
        });
    }
    let plot = Scatter {
        title: "found fronts by stand-alone accuracy".into(),
        x_label: "multiply-adds (millions)".into(),
        y_label: "stand-alone top-1 (%)".into(),
        series,
        markers: Vec::new(),
    };
    html.push_str(&plot.to_svg());
    html.push_str("</div>\n");
}

/// Wall time per stage.
fn stage_table(html: &mut String, timings: &[(String, f64)]) {
    html.push_str(
        "<h2 id=\"timings\">Stages</h2>\n<table><tr><th class=\"l\">stage</th><th>wall (s)</th></tr>\n",
    );
    for (name, secs) in timings {
        let _ = writeln!(html, "<tr><td class=\"l\">{}</td><td>{secs:.1}</td></tr>", escape(name));
    }
    html.push_str("</table>\n");
}

/// The supernet's loss and accuracy per epoch.
fn training_section(html: &mut String, metrics: &[EpochMetrics]) {
    let epoch_series = |value: fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        metrics.iter().map(|m| (m.epoch as f64 + 1.0, value(m))).collect()
    };
    html.push_str("<h2 id=\"training\">Supernet training</h2>\n<div class=\"charts\">\n");
    html.push_str(&line_chart(
        "training loss per epoch (mean over paths)",
        "epoch",
        "loss",
        "train loss",
        "#d62728",
        epoch_series(|m| m.train_loss),
    ));
    html.push_str(&line_chart(
        "training top-1 per epoch (augmented, all paths)",
        "epoch",
        "top-1 (%)",
        "train top-1",
        "#2ca02c",
        epoch_series(|m| m.train_top1 * 100.0),
    ));
    html.push_str("</div>\n");
}

/// The front, and hypervolume and front size per generation.
fn search_section(html: &mut String, front_svg: &str, state: &SavedSearch) {
    let history = &state.state.history;
    let scale = state.config.reference_box();
    let hv: Vec<(f64, f64)> = history.iter().map(|h| (h.generation as f64, h.hypervolume / scale)).collect();
    let front_size: Vec<(f64, f64)> =
        history.iter().map(|h| (h.generation as f64, h.front_size as f64)).collect();
    html.push_str("<h2 id=\"search\">Search</h2>\n<div class=\"charts\">\n");
    html.push_str(front_svg);
    html.push_str(&line_chart(
        "hypervolume of the population's front per generation",
        "generation",
        "fraction of the reference box dominated",
        "hypervolume",
        "#1f77b4",
        hv,
    ));
    html.push_str(&line_chart(
        "front size per generation",
        "generation",
        "architectures",
        "front size",
        "#9467bd",
        front_size,
    ));
    html.push_str("</div>\n");
}

/// Per-layer choice frequencies on the front.
fn choice_frequencies(html: &mut String, choices: &[Vec<usize>]) {
    let layers = choices.first().map_or(0, Vec::len);
    let choices_max = choices.iter().flatten().max().map_or(0, |m| m + 1);
    html.push_str(
        "<h2 id=\"frequencies\">Choices on the front, per layer</h2>\n<table><tr><th class=\"l\">layer</th>",
    );
    for c in 0..choices_max {
        let _ = write!(html, "<th>choice {c}</th>");
    }
    html.push_str("</tr>\n");
    for l in 0..layers {
        let _ = write!(html, "<tr><td class=\"l\">{l}</td>");
        for c in 0..choices_max {
            let n = choices.iter().filter(|f| f.get(l) == Some(&c)).count();
            let share = n as f64 / choices.len().max(1) as f64;
            let _ =
                write!(html, "<td style=\"background: rgba(31,119,180,{:.2})\">{n}</td>", 0.1 + 0.8 * share);
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
}

/// The exported models' costs, latencies and accuracies.
fn models_section(html: &mut String, models: &[ExportedModel], latency: &LatencyTable) {
    html.push_str(
        "<h2 id=\"models\">Exported models</h2>\n<table><tr><th class=\"l\">choices</th><th class=\"l\">blocks</th>\
         <th>params</th><th>multiply-adds</th><th>latency, table (ms)</th><th>latency, measured (ms)</th>\
         <th>one-shot top-1 (%)</th><th>fine-tuned top-1 (%)</th><th class=\"l\">files</th></tr>\n",
    );
    for m in models {
        let _ = writeln!(
            html,
            "<tr><td class=\"l\"><code>{}</code></td><td class=\"l\"><code>{}</code></td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.2}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            escape(&m.choices),
            escape(&m.blocks),
            m.params,
            m.madds,
            m.predicted_latency_ms,
            m.measured_latency_ms,
            m.one_shot_acc,
            m.finetuned_top1.map_or("-".into(), |t| format!("{:.2}", 100.0 * t)),
            model_links(m)
        );
    }
    html.push_str("</table>\n");
    let _ = writeln!(
        html,
        "<p>Latency: batch {}, {} threads, the table's error against measured end-to-end latency on random architectures: MAPE {:.2}%.</p>",
        latency.batch,
        latency.threads,
        latency.check.as_ref().map_or(f64::NAN, |c| c.mape)
    );
}

/// Links to a model's files, relative to the report (`models/<choices>/`).
fn model_links(m: &ExportedModel) -> String {
    let folder = format!("models/{}", escape(&m.choices));
    let mut links = format!("<a href=\"{folder}/weights.safetensors\">safetensors</a>");
    if m.onnx.is_some() {
        let _ = write!(links, " <a href=\"{folder}/model.onnx\">onnx</a>");
    }
    links
}

/// What the run folder holds.
fn files_section(html: &mut String) {
    html.push_str(
        "<h2 id=\"files\">Files</h2>\n<ul><li><code>nas-config.json</code>: this run's settings</li>\
         <li><code>supernet/</code>: checkpoint, metrics.jsonl</li><li><code>latency.json</code>: the latency table</li>\
         <li><code>search/</code>: front.json, front.csv, front.svg, search-state.json, scores.jsonl</li>\
         <li><code>models/&lt;choices&gt;/</code>: weights.safetensors, model.json, model.onnx (opset 17, BN folded, preprocessing in its metadata)</li>\
         <li><code>finetune/&lt;choices&gt;/</code>: the stand-alone run</li></ul>\n</body></html>\n",
    );
}
