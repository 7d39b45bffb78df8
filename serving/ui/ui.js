// The page behind /ui: calls /metadata and /classify on this origin, nothing else.
// Each file is its own /classify request (a few at a time), so one bad file fails only itself;
// the server's adaptive batching groups the requests again.
"use strict";

const KEY_STORAGE = "image-classifier.api-key";
const PARALLEL_REQUESTS = 4;

const $ = (id) => document.getElementById(id);
let chosenFiles = [];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// An RFC 9457 problem-details body, or something shaped like one for any other error answer.
async function readProblem(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch (_) {
    problem = {};
  }
  return {
    status: response.status,
    title: problem.title || `HTTP ${response.status}`,
    detail: problem.detail || "",
    errors: Array.isArray(problem.errors) ? problem.errors : [],
  };
}

function describeProblem(problem) {
  if (problem.status === 401) {
    return "API key missing or wrong: enter a valid key above (the server answered 401).";
  }
  return problem.detail ? `${problem.title}: ${problem.detail}` : problem.title;
}

function showBanner(message) {
  $("banner").textContent = message;
  $("banner").hidden = !message;
}

// Each key change reloads the lineage: only the newest request may write the answer (an
// earlier, keyless request's 401 can arrive after the keyed 200).
let lineageRequest = 0;

async function loadLineage() {
  const status = $("lineage-status");
  const request = ++lineageRequest;
  status.textContent = "Loading the model's metadata…";
  status.classList.remove("error");
  try {
    const response = await fetch("/metadata", { method: "POST", headers: authHeaders() });
    if (request !== lineageRequest) return;
    if (!response.ok) {
      status.textContent = `Model metadata unavailable. ${describeProblem(await readProblem(response))}`;
      status.classList.add("error");
      $("lineage-fields").hidden = true;
      return;
    }
    const metadata = await response.json();
    if (request !== lineageRequest) return;
    const values = { ...metadata.model, task: metadata.task, architecture: metadata.architecture };
    for (const field of document.querySelectorAll("#lineage-fields [data-field]")) {
      field.textContent = values[field.dataset.field] || "–";
    }
    status.textContent = "";
    status.classList.remove("error");
    $("lineage-fields").hidden = false;
  } catch (error) {
    if (request !== lineageRequest) return;
    status.textContent = `Model metadata unavailable: ${error}`;
    status.classList.add("error");
  }
}

function resultCard(file) {
  const card = element("article", "result");
  card.dataset.file = file.name;
  const thumbnail = element("img");
  thumbnail.alt = file.name;
  thumbnail.src = URL.createObjectURL(file);
  thumbnail.addEventListener("load", () => URL.revokeObjectURL(thumbnail.src), { once: true });
  const body = element("div", "body");
  body.append(element("p", "file", file.name), element("p", "state", "Classifying…"));
  card.append(thumbnail, body);
  return card;
}

function showLabels(card, classification) {
  const list = element("ol", "labels");
  for (const { label, score } of classification.labels) {
    const item = element("li");
    item.dataset.label = label;
    item.dataset.score = String(score);
    const bar = element("span", "bar");
    const fill = element("span");
    fill.style.width = `${(score * 100).toFixed(1)}%`;
    bar.append(fill);
    item.append(element("span", "label", label), element("span", "score", `${(score * 100).toFixed(1)}%`), bar);
    list.append(item);
  }
  const state = card.querySelector(".state");
  state.textContent = classification.labels.length ? "" : "No label reached its threshold.";
  card.querySelector(".body").append(list);
  card.classList.add("done");
}

function showError(card, problem) {
  const error = element("div", "error");
  error.append(element("p", "", describeProblem(problem)));
  const reasons = problem.errors.filter((e) => e.reason && e.reason !== problem.detail);
  if (reasons.length) {
    const list = element("ul");
    for (const e of reasons) list.append(element("li", "", e.file ? `${e.file}: ${e.reason}` : `${e.field}: ${e.reason}`));
    error.append(list);
  }
  card.querySelector(".state").remove();
  card.querySelector(".body").append(error);
  card.classList.add("done", "failed");
}

function requestBody(file) {
  const form = new FormData();
  form.append("images", file, file.name);
  const topK = $("top-k").value.trim();
  const threshold = $("threshold").value.trim();
  if (topK) form.append("top_k", topK);
  if (threshold) form.append("threshold", threshold);
  return form;
}

async function classifyOne(file, card) {
  let response;
  try {
    response = await fetch("/classify", { method: "POST", headers: authHeaders(), body: requestBody(file) });
  } catch (error) {
    showError(card, { status: 0, title: "The server could not be reached", detail: String(error), errors: [] });
    return 0;
  }
  if (!response.ok) {
    const problem = await readProblem(response);
    showError(card, problem);
    return problem.status;
  }
  const [classification] = await response.json();
  showLabels(card, classification);
  return response.status;
}

async function classifyAll() {
  showBanner("");
  const results = $("results");
  results.replaceChildren();
  const queue = chosenFiles.map((file) => {
    const card = resultCard(file);
    results.append(card);
    return [file, card];
  });
  const statuses = [];
  const worker = async () => {
    while (queue.length) {
      const [file, card] = queue.shift();
      statuses.push(await classifyOne(file, card));
    }
  };
  await Promise.all(Array.from({ length: PARALLEL_REQUESTS }, worker));
  if (statuses.includes(401)) showBanner(describeProblem({ status: 401 }));
  $("classify-again").disabled = chosenFiles.length === 0;
}

function choose(files) {
  chosenFiles = Array.from(files);
  if (chosenFiles.length) classifyAll();
}

function setUp() {
  const keyInput = $("api-key");
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, keyInput.value.trim());
    loadLineage();
  });
  $("files").addEventListener("change", (event) => choose(event.target.files));
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    if (chosenFiles.length) classifyAll();
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    choose(event.dataTransfer.files);
  });
  loadLineage();
}

document.addEventListener("DOMContentLoaded", setUp);
