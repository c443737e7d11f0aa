"""Webhooks API (project admins): parse, authorise (``webhooks.selectors`` /
``project_get_for_user``), call one service, serialise."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations.selectors import project_get_for_user
from core.api.parsing import PAGE_PARAMETERS, paginate, paginated, parse, request_user
from webhooks import selectors, services
from webhooks.api import serializers as s


class ProjectWebhooksView(APIView):
    @extend_schema(parameters=PAGE_PARAMETERS, responses=paginated(s.WebhookOut), tags=["webhooks"])
    def get(self, request: Request, project_id: int) -> Response:
        project = project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        return paginate(request, self, selectors.webhook_list(project=project), s.WebhookOut)

    @extend_schema(request=s.WebhookIn, responses={201: s.WebhookCreatedOut}, tags=["webhooks"])
    def post(self, request: Request, project_id: int) -> Response:
        project = project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        data = parse(s.WebhookIn, request.data)
        subscription, secret = services.webhook_create(project=project, user=request_user(request), **data)
        body = dict(s.WebhookOut(subscription).data) | {"secret": secret}
        return Response(body, status=status.HTTP_201_CREATED)


class WebhookDetailView(APIView):
    @extend_schema(responses=s.WebhookOut, tags=["webhooks"])
    def get(self, request: Request, webhook_id: int) -> Response:
        subscription = selectors.webhook_get_for_user(user=request_user(request), webhook_id=webhook_id)
        return Response(s.WebhookOut(subscription).data)

    @extend_schema(request=s.WebhookUpdateIn, responses=s.WebhookOut, tags=["webhooks"])
    def patch(self, request: Request, webhook_id: int) -> Response:
        subscription = selectors.webhook_get_for_user(user=request_user(request), webhook_id=webhook_id)
        data = parse(s.WebhookUpdateIn, request.data, partial=True)
        subscription = services.webhook_update(subscription=subscription, user=request_user(request), data=data)
        return Response(s.WebhookOut(subscription).data)

    @extend_schema(responses={204: None}, tags=["webhooks"])
    def delete(self, request: Request, webhook_id: int) -> Response:
        subscription = selectors.webhook_get_for_user(user=request_user(request), webhook_id=webhook_id)
        services.webhook_delete(subscription=subscription, user=request_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookPingView(APIView):
    @extend_schema(request=None, responses={202: s.DeliveryOut}, tags=["webhooks"])
    def post(self, request: Request, webhook_id: int) -> Response:
        subscription = selectors.webhook_get_for_user(user=request_user(request), webhook_id=webhook_id)
        delivery = services.webhook_ping(subscription=subscription, user=request_user(request))
        return Response(s.DeliveryOut(delivery).data, status=status.HTTP_202_ACCEPTED)


class WebhookDeliveriesView(APIView):
    @extend_schema(parameters=PAGE_PARAMETERS, responses=paginated(s.DeliveryOut), tags=["webhooks"])
    def get(self, request: Request, webhook_id: int) -> Response:
        subscription = selectors.webhook_get_for_user(user=request_user(request), webhook_id=webhook_id)
        return paginate(request, self, selectors.delivery_list(subscription=subscription), s.DeliveryOut)
