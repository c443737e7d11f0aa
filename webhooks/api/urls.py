from django.urls import path

from webhooks.api import views

urlpatterns = [
    path("projects/<int:project_id>/webhooks", views.ProjectWebhooksView.as_view(), name="webhooks"),
    path("webhooks/<int:webhook_id>", views.WebhookDetailView.as_view(), name="webhook-detail"),
    path("webhooks/<int:webhook_id>/ping", views.WebhookPingView.as_view(), name="webhook-ping"),
    path("webhooks/<int:webhook_id>/deliveries", views.WebhookDeliveriesView.as_view(), name="webhook-deliveries"),
]
