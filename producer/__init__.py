"""The submitting side of jobctl: the CLI, the Python API for scripts, and the local model server.

from producer import Client
client = Client()                      # settings from the environment
batch = client.submit_file("inbox.json")
client.wait(batch.batch_id)
for line in client.results(batch.batch_id): ...
"""

from producer.client import Client

__all__ = ["Client"]
