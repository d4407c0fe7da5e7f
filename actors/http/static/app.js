// The live page: plain JavaScript against the service's own API, no build step.
// Everything a user typed or an event carries is shown with textContent, never as HTML.
"use strict";

const TAIL_ROWS = 50;
const HEALTH_EVERY_MS = 2000;
const counts = new Map();

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function setBadge(node, text, state) {
  node.textContent = text;
  node.className = "badge " + state;
}

// --- sending an event --------------------------------------------------------------------

function requestBody() {
  // The payload goes as typed: invalid JSON is the API's to reject, and its answer is shown.
  const userId = JSON.stringify(document.getElementById("userId").value);
  const eventType = JSON.stringify(document.getElementById("eventType").value);
  const payload = document.getElementById("payload").value.trim();
  const fields = ['"userId":' + userId, '"eventType":' + eventType];
  if (payload !== "") fields.push('"payload":' + payload);
  return "{" + fields.join(",") + "}";
}

function showAnswer(status, answer) {
  const result = document.getElementById("result");
  const problems = document.getElementById("problems");
  problems.replaceChildren();
  if (status === 201) {
    result.className = "result ok";
    result.textContent = "201: published " + answer.eventId;
    return;
  }
  result.className = "result bad";
  const error = answer && answer.error ? answer.error : "error";
  const message = answer && answer.message ? answer.message : "";
  result.textContent = status + " " + error + (message ? ": " + message : "");
  for (const problem of (answer && answer.problems) || []) {
    problems.append(element("li", problem.field + ": " + problem.message));
  }
}

async function sendEvent(submitted) {
  submitted.preventDefault();
  let response;
  try {
    response = await fetch("/events/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: requestBody(),
    });
  } catch (failure) {
    showAnswer(0, { error: "network_error", message: String(failure) });
    return;
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch (notJson) {
    answer = { error: "unreadable_answer", message: "the answer was not JSON" };
  }
  showAnswer(response.status, answer);
}

// --- the live tail and the counts --------------------------------------------------------

function countEvent(eventType) {
  counts.set(eventType, (counts.get(eventType) || 0) + 1);
  const body = document.querySelector("#counts tbody");
  body.replaceChildren();
  for (const [name, count] of [...counts.entries()].sort()) {
    const row = element("tr");
    row.append(element("td", name), element("td", String(count)));
    row.dataset.eventType = name;
    body.append(row);
  }
}

function showEvent(id, event) {
  const row = element("tr", undefined, "fresh");
  row.dataset.eventId = event.eventId;
  row.append(
    element("td", id, "mono"),
    element("td", event.timestamp),
    element("td", event.userId),
    element("td", event.eventType),
    element("td", JSON.stringify(event.payload), "mono"),
    element("td", event.eventId, "mono"),
  );
  const tail = document.getElementById("tail");
  tail.prepend(row);
  while (tail.rows.length > TAIL_ROWS) tail.deleteRow(-1);
}

function openStream() {
  // EventSource reconnects by itself and sends Last-Event-ID, so nothing is missed.
  const state = document.getElementById("stream-state");
  const stream = new EventSource("/events/stream");
  stream.onopen = () => setBadge(state, "live", "ok");
  stream.onerror = () => setBadge(state, "reconnecting…", "bad");
  stream.onmessage = (message) => {
    const event = JSON.parse(message.data);
    countEvent(event.eventType);
    showEvent(message.lastEventId, event);
  };
}

// --- health ------------------------------------------------------------------------------

async function readHealth() {
  // /health/ready where the service has it, else /health: both answer 200 or 503 with JSON.
  for (const path of ["/health/ready", "/health"]) {
    const response = await fetch(path, { cache: "no-store" });
    if (response.status === 404) continue;
    return { status: response.status, body: await response.json() };
  }
  throw new Error("no health endpoint");
}

async function pollHealth() {
  const badge = document.getElementById("health");
  const detail = document.getElementById("health-detail");
  try {
    const health = await readHealth();
    const healthy = health.status === 200;
    setBadge(badge, healthy ? "ok" : "degraded (" + health.status + ")", healthy ? "ok" : "bad");
    const reasons = [];
    for (const [name, actor] of Object.entries(health.body.actors || {})) {
      if (actor.state !== "running") reasons.push(name + ": " + (actor.detail || actor.state));
    }
    detail.textContent = reasons.join("; ");
  } catch (failure) {
    setBadge(badge, "unreachable", "bad");
    detail.textContent = String(failure);
  }
}

// --- event types from the live OpenAPI description (EVENT_TYPES may narrow them) ----------

async function loadEventTypes() {
  try {
    const document_ = await (await fetch("/openapi.json")).json();
    const names = document_.components.schemas.NewEvent.properties.eventType.enum;
    const select = document.getElementById("eventType");
    select.replaceChildren(...names.map((name) => element("option", name)));
  } catch (failure) {
    // The static options stay.
  }
}

document.getElementById("event-form").addEventListener("submit", sendEvent);
loadEventTypes();
openStream();
pollHealth();
setInterval(pollHealth, HEALTH_EVERY_MS);
