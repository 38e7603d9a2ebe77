/* Provider glue, shaped like Mephisto's mock provider's wrap_crowd_source.js:
 * mephisto-task 2.0.4 calls these as free globals. The worker and the
 * assignment come from the page URL (?worker_id=...&assignment_id=...).
 * handleSubmitToProvider records the submission in the DOM (data-provider-
 * submitted on <body>) so the test can see that mephisto-task's
 * handleSubmit finished its POST. */
/* eslint-disable no-unused-vars */
function getWorkerName() {
  return new URLSearchParams(window.location.search).get("worker_id");
}

function getAssignmentId() {
  return new URLSearchParams(window.location.search).get("assignment_id");
}

function getAgentRegistration() {
  return {
    worker_name: getWorkerName(),
    agent_registration_id: getWorkerName() + "-" + getAssignmentId(),
    assignment_id: getAssignmentId(),
    provider_type: "mock",
  };
}

function handleSubmitToProvider(taskData) {
  document.body.setAttribute("data-provider-submitted", JSON.stringify(taskData));
  return true;
}
