// Whose turn it is, from protocol-v1 messages: the page's turn indicator, pure (no DOM, no sockets).
// The same rules as client/turns.py; tests/test_browser.py runs both on one table (tests/test_clients.py).
//
//   speaking   the user holds the turn: after speech_start, turn_resumed, and while partials arrive
//   thinking   the server judges a pause or owes the final: after eager_end_of_turn (its text is
//              shown as tentative, eagerText) or speech_end
//   your_turn  the utterance's final arrived: the agent's cue to answer
//   idle       before any speech, after cleared (no final follows) and after end
//
// A length cut (reason max_length) splits one turn into two utterances, so it keeps "speaking".

/** speech_end/final reasons after which the user still holds the turn (every other reason ends it). */
export const CONTINUING_REASONS = new Set(["max_length"]);

/** What a person reads for each state. */
export const TURN_LABELS = Object.freeze({
  idle: "idle", speaking: "speaking", thinking: "thinking", your_turn: "your turn",
});

export const IDLE = Object.freeze({ state: "idle", utteranceId: null, eagerText: "", reason: null });

function turn(state, utteranceId, eagerText = "", reason = null) {
  return Object.freeze({ state, utteranceId: utteranceId ?? null, eagerText, reason: reason ?? null });
}

/** The turn after one v1 server message (as parsed from the wire); unknown messages change nothing. */
export function nextTurn(current, message) {
  const uid = message.utterance_id;
  switch (message.type) {
    case "ready": // a new connection numbers utterances from 0 again
    case "end":
    case "cleared":
      return IDLE;
    case "speech_start":
    case "turn_resumed":
      return turn("speaking", uid);
    case "partial":
      // A partial decoded before the pause may arrive after eager_end_of_turn: it takes nothing back.
      return current.state === "thinking" && uid === current.utteranceId ? current : turn("speaking", uid);
    case "eager_end_of_turn":
      return turn("thinking", uid, String(message.text || "").trim());
    case "speech_end":
      if (CONTINUING_REASONS.has(message.reason)) return turn("speaking", uid);
      return turn("thinking", uid, uid === current.utteranceId ? current.eagerText : "");
    case "final":
      if (Number.isInteger(uid) && Number.isInteger(current.utteranceId) && uid < current.utteranceId) {
        return current; // an earlier utterance's final, decoded while the user already speaks again
      }
      if (CONTINUING_REASONS.has(message.reason)) return turn("speaking", uid);
      return turn("your_turn", uid, "", message.reason);
    default:
      return current;
  }
}
