"""The draining side of jobctl: an asyncio drain that keeps many requests in flight against any
OpenAI-compatible server, while each task moves through RQ's own states; and the vLLM lifecycle
(start, warm up, sleep, wake) that the Modal deployment and the GPU benchmark share."""
