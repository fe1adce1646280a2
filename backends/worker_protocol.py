"""Messages between the UI process and the model worker: tuples whose first item is the op.

UI -> worker:  (LOAD, spec_dict) | (CHAT, req_id, messages, sampling_dict[, logprobs]) | (CANCEL, req_id)
               | (SHUTDOWN,)     (logprobs: None or the number of top tokens, only when asked)
               | (SCORE, req_id, text, quality_options_dict, reference_or_None, keep_top)   (the quality check)
worker -> UI:  (READY, pid) | (LOADED, info_dict)
               | (DELTA, req_id, text, prompt_tokens, completion_tokens, n_ctx[, entries])   (text may be "":
                 counts only; entries: the text's tokens' (bytes, logprob, ((bytes, logprob), ...)), when asked)
               | (DONE, req_id, stats_dict)
               | (ERROR, req_id_or_None, kind, message) | (BYE,)
               | (SCORE_START, req_id, n_tokens, windows_total, vocab)
               | (WINDOW, req_id, window_score_dict, top_ids, top_logprobs)   (numpy arrays)
               a SCORE ends with (DONE, req_id, {"complete": bool}) or ERROR
"""
LOAD, CHAT, CANCEL, SHUTDOWN = "load", "chat", "cancel", "shutdown"
READY, LOADED, DELTA, DONE, ERROR, BYE = "ready", "loaded", "delta", "done", "error", "bye"
SCORE, SCORE_START, WINDOW = "score", "score_start", "window"
