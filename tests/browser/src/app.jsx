/* A small live task page built on the published mephisto-task 2.0.4, the
 * way Mephisto's own React task apps use it:
 *   useMephistoLiveTask -> task_config.json, POST /request_agent, and (after
 *   connect(agentId)) the WebSocket with alive, heartbeats and the packet
 *   queue; sendLiveUpdate -> mephisto_bound_live_update; onLiveUpdate <-
 *   client_bound_live_update; onStatusUpdate <- update_status;
 *   handleSubmit -> JSON POST /submit_task.
 * A submission with a file goes the way Mephisto's static-HTML task app does
 * it with this version (2.0.4's handleSubmit only posts JSON): the form's
 * FormData plus USED_AGENT_ID and final_string_data, POSTed with the
 * package's own postData (axios then sends multipart/form-data).
 * Everything the test reads is in the DOM under stable ids. */
import React from "react";
import { createRoot } from "react-dom/client";
import { useMephistoLiveTask, postData, ErrorBoundary } from "mephisto-task";

/* global handleSubmitToProvider */

function App() {
  const [received, setReceived] = React.useState([]);
  const [sent, setSent] = React.useState([]);
  const [statuses, setStatuses] = React.useState([]);
  const [text, setText] = React.useState("");
  const [submitState, setSubmitState] = React.useState("");

  const {
    agentId,
    isLoading,
    isPreview,
    blockedReason,
    blockedExplanation,
    initialTaskData,
    handleSubmit,
    handleFatalError,
    connect,
    sendLiveUpdate,
    agentStatus,
    connectionStatus,
  } = useMephistoLiveTask({
    onLiveUpdate: (update) => setReceived((r) => [...r, update]),
    onStatusUpdate: ({ status }) => setStatuses((s) => [...s, status]),
  });

  // As Mephisto's live task apps do: open the socket once the agent is known.
  React.useEffect(() => {
    if (agentId) {
      connect(agentId);
    }
  }, [agentId]);

  function onSend(event) {
    event.preventDefault();
    const message = { text };
    setText("");
    // resolves once mephisto-task has written the packet to the socket
    sendLiveUpdate(message).then((data) =>
      setSent((s) => [...s, { text: data.text, update_id: data.update_id }])
    );
  }

  function onSubmit(event) {
    event.preventDefault();
    const formData = new FormData(event.currentTarget);
    const file = formData.get("upload");
    const objData = {
      answer: formData.get("answer"),
      received: received.map((u) => u.text),
      sent: sent.map((u) => u.text),
    };
    setSubmitState("submitting");
    if (file && file.size > 0) {
      formData.append("USED_AGENT_ID", agentId);
      formData.append("final_string_data", JSON.stringify(objData));
      postData("/submit_task", formData).then(
        (res) => {
          handleSubmitToProvider(objData);
          setSubmitState(res.status);
        },
        (err) => setSubmitState("error: " + err.message)
      );
    } else {
      handleSubmit(objData);
    }
  }

  return (
    <div style={{ fontFamily: "sans-serif", margin: 16 }}>
      <h3>mephisto-router browser test</h3>
      <table>
        <tbody>
          <tr><td>agent</td><td id="agent-id">{agentId || ""}</td></tr>
          <tr><td>loading</td><td id="loading">{String(isLoading)}</td></tr>
          <tr><td>preview</td><td id="preview">{String(isPreview)}</td></tr>
          <tr><td>blocked</td><td id="blocked">{blockedReason ? blockedReason + ": " + blockedExplanation : ""}</td></tr>
          <tr><td>connection</td><td id="connection-status">{connectionStatus}</td></tr>
          <tr><td>status</td><td id="agent-status">{agentStatus || ""}</td></tr>
          <tr><td>statuses seen</td><td id="statuses">{statuses.join(",")}</td></tr>
          <tr><td>question</td><td id="question">{initialTaskData ? initialTaskData.question : ""}</td></tr>
          <tr><td>submission</td><td id="submit-state">{submitState}</td></tr>
        </tbody>
      </table>
      {!isLoading && (
        <div>
          <form id="live-form" onSubmit={onSend}>
            <input id="live-text" value={text} onChange={(e) => setText(e.target.value)} />
            <button id="send-live" type="submit">Send live update</button>
          </form>
          <h4>received</h4>
          <ul id="received">
            {received.map((u, i) => (
              <li key={i} data-update-id={u.update_id}>{u.text}</li>
            ))}
          </ul>
          <h4>sent</h4>
          <ul id="sent">
            {sent.map((u, i) => (
              <li key={i} data-update-id={u.update_id}>{u.text}</li>
            ))}
          </ul>
          <form id="submit-form" encType="multipart/form-data" onSubmit={onSubmit}>
            <input name="answer" id="answer" defaultValue="4" />
            <input name="upload" id="upload" type="file" />
            <button id="submit" type="submit" disabled={submitState !== ""}>Submit</button>
          </form>
        </div>
      )}
      <ErrorBoundary handleError={handleFatalError}><span /></ErrorBoundary>
    </div>
  );
}

createRoot(document.getElementById("app")).render(<App />);
