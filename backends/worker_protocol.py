"""Messages between the UI process and the model worker: tuples whose first item is the op.

UI -> worker:  (LOAD, spec_dict) | (CHAT, req_id, messages, sampling_dict) | (CANCEL, req_id) | (SHUTDOWN,)
worker -> UI:  (READY, pid) | (LOADED, info_dict)
               | (DELTA, req_id, text, prompt_tokens, completion_tokens, n_ctx)   (text may be "": counts only)
               | (DONE, req_id, stats_dict)
               | (ERROR, req_id_or_None, kind, message) | (BYE,)
"""
LOAD, CHAT, CANCEL, SHUTDOWN = "load", "chat", "cancel", "shutdown"
READY, LOADED, DELTA, DONE, ERROR, BYE = "ready", "loaded", "delta", "done", "error", "bye"
